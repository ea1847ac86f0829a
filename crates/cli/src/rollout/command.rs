//! The `graylane rollout` command line: `rollout PLAN`, or
//! `rollout status|pause|resume|abort PLAN`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// The plan (YAML or JSON), or one of status, pause, resume, abort followed by the plan
    #[arg(value_name = "PLAN | ACTION")]
    pub first: String,
    /// The plan, after an action
    #[arg(value_name = "PLAN")]
    pub plan: Option<PathBuf>,
}

const ACTIONS: [&str; 4] = ["status", "pause", "resume", "abort"];

/// Runs the command; `Err` carries the exit code and the message.
pub fn command(args: &RolloutArgs, out: &mut dyn Write) -> Result<String, (u8, String)> {
    let (action, file) = match (&args.plan, ACTIONS.contains(&args.first.as_str())) {
        (Some(plan), true) => (args.first.as_str(), plan.clone()),
        (None, false) => ("run", PathBuf::from(&args.first)),
        (Some(_), false) => {
            return Err((
                crate::EXIT_USAGE,
                format!("graylane: rollout {:?}: the action must be one of {}", args.first, ACTIONS.join(", ")),
            ))
        }
        (None, true) => {
            return Err((crate::EXIT_USAGE, format!("graylane: rollout {}: give the plan too: graylane rollout {} PLAN", args.first, args.first)))
        }
    };
    let plan = super::plan::load(&file).map_err(|error| (error.exit_code(), error.to_string()))?;
    let invalid = |message: String| (crate::EXIT_INVALID, format!("graylane: rollout {action}: {message}"));
    let ended = match action {
        "status" => return super::status(&plan).map_err(invalid),
        "pause" => return super::set_paused(&plan, true).map_err(invalid),
        "resume" => return super::set_paused(&plan, false).map_err(invalid),
        "abort" => super::abort(&plan, out)?,
        _ => super::run(&plan, out)?,
    };
    if ended.code == crate::EXIT_OK {
        Ok(format!("{}\n", ended.message))
    } else {
        Err((ended.code, ended.message))
    }
}
