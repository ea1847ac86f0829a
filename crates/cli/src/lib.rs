//! The `graylane` command: checks a rule document, explains the decision for
//! one request, simulates many, and writes an Envoy config. Everything routes
//! through [`graylane_core::decision::decide`], the function the plugin calls, and
//! every document is compiled by [`graylane_core::config::compile_value`], the
//! plugin's own compiler.
//!
//! Exit codes: 0 ok, 1 the rules were refused (or a check failed), 2 usage
//! error (bad flags, unreadable files).

pub mod document;
pub mod envoy;
pub mod explain;
pub mod import;
#[cfg(feature = "image")]
pub mod image;
pub mod yaml;
pub mod request;
pub mod schema;
pub mod simulate;
#[cfg(feature = "rollout")]
pub mod http;
#[cfg(feature = "rollout")]
pub mod rollout;
#[cfg(feature = "rollout")]
pub mod stats;
#[cfg(feature = "rollout")]
pub mod status;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use document::{Document, Format, LoadError};
use request::RequestSpec;
use simulate::Population;

pub const EXIT_OK: u8 = 0;
pub const EXIT_INVALID: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "graylane",
    version = graylane_core::VERSION,
    about = "Check, explain and simulate graylane canary / blue-green rules, and write an Envoy config for them",
    long_about = "Check, explain and simulate graylane canary / blue-green rules, and write an Envoy config for them.\n\n\
        Rule documents are the plugin's JSON document, or the same in YAML (by extension, .json / .yaml / .yml, \
        else by content). Every command compiles them with the plugin's own compiler and decides requests with \
        the plugin's own decision function.\n\n\
        Exit codes: 0 ok; 1 the rules were refused; 2 usage error (bad flags, a file that cannot be read)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the JSON Schema of the rule document (for editors; `graylane check` is the authority)
    #[command(
        long_about = "Print a JSON Schema (draft 2020-12) of the plugin's document, for editors completing and \
            checking graylane.json or WasmPlugin.pluginConfig. The repository publishes it as \
            schema/graylane.schema.json. What a schema cannot say (a default naming a subset of its service, \
            weights summing to at most 100, repeated names, regexes that compile, the limits) only \
            `graylane check` refuses."
    )]
    Schema,
    /// Validate a rule document; print every refusal as FILE:LINE:COLUMN: PATH: REASON
    #[command(
        long_about = "Validate a rule document as the plugin would when configured.\n\n\
            Each refusal is printed on standard error as FILE:LINE:COLUMN: JSON-PATH: REASON; for a required field \
            that is missing, the line and column are those of the object that misses it. Exit 0 when the document \
            is valid, 1 when it is refused, 2 when it cannot be read."
    )]
    Check {
        /// The rule document (JSON or YAML)
        file: PathBuf,
        /// Print nothing when the document is valid
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show which service, subset and cluster one request gets, the header edits, and why
    #[command(
        long_about = "Show the decision for one request: the service, the subset, the cluster, the headers set and \
            removed, and why (the tag; the match entry and its conditions; or the weight bucket of 10,000, whose \
            range it falls in and whether it came from the sticky key).\n\n\
            Without a sticky key the weighted split is drawn from each gateway worker's own sequence: the result \
            then depends on that sequence, and the probabilities of each outcome are shown.\n\n\
            Example: graylane explain rules.yaml --host b.example.com --path '/api/b/list?canary=true' -H 'userid: 42'"
    )]
    Explain {
        /// The rule document (JSON or YAML)
        file: PathBuf,
        #[command(flatten)]
        request: RequestArgs,
        /// Print the decision as one JSON object (the `expect` form of a requests file)
        #[arg(long)]
        json: bool,
    },
    /// Replay many requests and print the split per service and subset
    #[command(
        long_about = "Replay many requests through the decision and print the split per service and subset.\n\n\
            The requests are COUNT copies of the one described by the request flags (with --users N, user i mod N \
            sends the service's sticky key as user-i), or the lines of --requests FILE (one JSON object per line: \
            host, path, method, headers, cookies, source_ip; `expect` and fields starting with _ are ignored).\n\n\
            With --compare OLD NEW, the same requests go through both documents and a matrix shows who moves from \
            where to where: the effect of a weight change before shipping it.\n\n\
            Examples:\n  graylane simulate rules.json --host b.example.com --path /api/b --users 10000\n  \
            graylane simulate --compare old.json new.json --host b.example.com --path /api/b --users 10000"
    )]
    Simulate(SimulateArgs),
    /// Translate a peer gateway's canary rules into a graylane document
    #[command(
        long_about = "Translate a peer gateway's canary rules into a graylane document, printed on standard output \
            and compiled with the plugin's own compiler first.\n\n\
            apisix FILE: an APISIX route (JSON or YAML, or an Admin API answer) with the traffic-split plugin.\n\
            ingress-nginx FILE: a YAML stream with a mainline Ingress and its canary Ingress.\n\n\
            Everything that could not be translated is listed on standard error, and the exit code is then 1 \
            (the document is printed all the same) unless --lossy; notes on what is said differently follow \"note:\"."
    )]
    Import {
        /// The peer whose configuration FILE holds
        #[arg(value_enum)]
        peer: import::Peer,
        /// The peer's configuration
        file: PathBuf,
        /// Exit 0 even when something could not be translated
        #[arg(long)]
        lossy: bool,
    },
    /// Print a ready Envoy config (YAML) that loads the plugin with these rules
    #[command(
        long_about = "Print a ready Envoy configuration (YAML) for these rules: the wasm filter with the rules \
            embedded, a route that forwards to the cluster named by the cluster header (only when that header is \
            present), a fallback route, and a stub cluster for every subset's cluster and for the fallback.\n\n\
            Check it with: envoy --mode validate -c envoy.yaml (this loads the plugin and configures it)."
    )]
    Envoy(EnvoyArgs),
    /// The plugin as an OCI image for Istio and Envoy Gateway: build a layout, print the digest, push
    #[cfg(feature = "image")]
    #[command(subcommand)]
    Image(ImageCommand),
    /// Show what gateways do now: weights beside observed shares, error rates, the live source
    #[cfg(feature = "rollout")]
    #[command(
        long_about = "Read each gateway's admin /stats and show, per service and subset, the configured weight \
            (with --rules or --etcd/--key) beside the share of requests the plugin counted and the upstream \
            error rate, over --window; and the live-rules source's version and fetch counters."
    )]
    Status(status::StatusArgs),
    /// Roll a subset out step by step over the live rules in etcd, watching the gateways; or status|pause|resume|abort
    #[cfg(feature = "rollout")]
    #[command(
        long_about = "graylane rollout PLAN runs (or resumes) a rollout plan: each step writes the rules (an etcd key \
            in one transaction, or a rules endpoint with If-Match), waits until every gateway reports the new \
            version, and watches the gateways' \
            statistics; a failed check rolls back at once and exits 1.\n\n\
            graylane rollout status|pause|resume|abort PLAN reads or changes the rollout of that plan's service.\n\n\
            Exit codes: 0 promoted or finished; 1 rolled back, aborted or failed; 2 usage error; 3 another rollout \
            of the service runs (or one of another plan is in progress)."
    )]
    Rollout(rollout::RolloutArgs),
}

/// `graylane image …`.
#[cfg(feature = "image")]
#[derive(Debug, Subcommand)]
#[command(
    long_about = "The plugin's .wasm as the OCI image Istio (WasmPlugin url: oci://…) and Envoy Gateway \
        (code.type: Image) pull: one image manifest whose only layer is a gzipped tar \
        (application/vnd.oci.image.layer.v1.tar+gzip) holding plugin.wasm.\n\n\
        The image is reproducible: the same .wasm gives the same manifest digest on every machine. Its hex is \
        the sha256 that WasmPlugin and Envoy Gateway's code.image take."
)]
enum ImageCommand {
    /// Write the image as an OCI image layout directory
    Build {
        /// The plugin (target/wasm32-wasip1/release/graylane.wasm)
        #[arg(long)]
        wasm: PathBuf,
        /// The layout directory (created; an index.json there is replaced)
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
        /// The tag recorded in index.json [default: graylane's version]
        #[arg(long)]
        tag: Option<String>,
    },
    /// Print the image's manifest digest (sha256:<hex>) without writing or pushing anything
    Digest {
        /// The plugin (target/wasm32-wasip1/release/graylane.wasm)
        #[arg(long)]
        wasm: PathBuf,
    },
    /// Push the image to a registry and print its manifest digest (sha256:<hex>)
    #[command(
        long_about = "Push the image to a registry (OCI distribution API) and print its manifest digest, \
            sha256:<hex>, on standard output; notes go to standard error.\n\n\
            Credentials: --username and --password, else Docker's config.json ($DOCKER_CONFIG or ~/.docker: \
            auths and credential helpers), else none. Token and HTTP Basic authentication both work for the push; \
            note that Istio 1.27.8+, 1.28.5+, 1.29.1+ and 1.30+ cannot pull from a registry that asks for HTTP \
            Basic authentication.\n\n\
            Plain HTTP for a registry on loopback (localhost, 127.0.0.0/8, [::1]) or with --plain-http; HTTPS \
            otherwise.\n\n\
            Example: graylane image push --wasm target/wasm32-wasip1/release/graylane.wasm \
            registry.example.com/graylane/graylane:0.1.0"
    )]
    Push {
        /// The plugin (target/wasm32-wasip1/release/graylane.wasm)
        #[arg(long)]
        wasm: PathBuf,
        /// Where: REGISTRY/REPOSITORY[:TAG] (no tag: latest)
        #[arg(value_name = "REF")]
        reference: String,
        /// Registry user name (with --password)
        #[arg(long, requires = "password")]
        username: Option<String>,
        /// Registry password or token (with --username)
        #[arg(long, requires = "username")]
        password: Option<String>,
        /// Upload each blob in one PUT instead of chunks
        #[arg(long)]
        monolithic: bool,
        /// Plain HTTP even though the registry is not on loopback
        #[arg(long)]
        plain_http: bool,
    },
}

/// A request described by flags.
#[derive(Debug, Args)]
struct RequestArgs {
    /// The request's host (:authority)
    #[arg(long)]
    host: Option<String>,
    /// The path, query string included [default: /]
    #[arg(long)]
    path: Option<String>,
    /// The method [default: GET]
    #[arg(long)]
    method: Option<String>,
    /// A request header, 'name: value' (repeatable)
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// A cookie, 'name=value' (repeatable)
    #[arg(long = "cookie", value_name = "NAME=VALUE")]
    cookies: Vec<String>,
    /// The client address (for sticky: {source_ip: true})
    #[arg(long)]
    source_ip: Option<String>,
    /// The request body, as the gateway would wait for it for `form`
    /// conditions (give content-type: application/x-www-form-urlencoded)
    #[arg(long)]
    body: Option<String>,
}

impl RequestArgs {
    /// Whether no flag describes the request.
    fn is_empty(&self) -> bool {
        self.host.is_none()
            && self.path.is_none()
            && self.method.is_none()
            && self.headers.is_empty()
            && self.cookies.is_empty()
            && self.source_ip.is_none()
            && self.body.is_none()
    }

    fn spec(&self) -> Result<RequestSpec, String> {
        let mut spec = RequestSpec {
            host: self.host.clone(),
            path: Some(self.path.clone().unwrap_or_else(|| "/".into())),
            method: Some(self.method.clone().unwrap_or_else(|| "GET".into())),
            source_ip: self.source_ip.clone(),
            body: self.body.clone(),
            ..RequestSpec::default()
        };
        for header in &self.headers {
            spec.add_header_line(header)?;
        }
        for cookie in &self.cookies {
            spec.add_cookie(cookie)?;
        }
        Ok(spec)
    }
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// The rule document (JSON or YAML)
    #[arg(required_unless_present = "compare", conflicts_with = "compare")]
    file: Option<PathBuf>,
    /// Compare two rule documents: who would move from where to where
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    compare: Option<Vec<PathBuf>>,
    #[command(flatten)]
    request: RequestArgs,
    /// How many requests (default: as many as --users, else 10000)
    #[arg(short = 'n', long, conflicts_with = "requests")]
    count: Option<usize>,
    /// A population of N sticky users: request i sends user-(i mod N) as the sticky key
    #[arg(long, value_name = "N", conflicts_with = "requests")]
    users: Option<usize>,
    /// Where the users send their key: header:NAME, cookie:NAME or source_ip (default: the service's sticky key)
    #[arg(long, value_name = "KEY", requires = "users")]
    user_key: Option<String>,
    /// Replay these requests instead: one JSON object per line
    #[arg(long, value_name = "FILE")]
    requests: Option<PathBuf>,
    /// Seed of the sequence that splits requests without a sticky key
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EnvoyArgs {
    /// The rule document (JSON or YAML)
    file: PathBuf,
    /// The plugin's .wasm as Envoy will find it [default: this checkout's release build, as an absolute path]
    #[arg(long)]
    wasm: Option<String>,
    /// The listener's address and port
    #[arg(long, default_value = "127.0.0.1:10000", value_name = "ADDR:PORT")]
    listen: std::net::SocketAddr,
    /// The admin interface's address and port
    #[arg(long, default_value = "127.0.0.1:9901", value_name = "ADDR:PORT", conflicts_with = "no_admin")]
    admin: std::net::SocketAddr,
    /// No admin interface
    #[arg(long)]
    no_admin: bool,
    /// An upstream of a cluster, CLUSTER=HOST:PORT (repeatable, several per cluster); a host name makes a DNS cluster
    #[arg(long = "endpoint", value_name = "CLUSTER=HOST:PORT")]
    endpoints: Vec<String>,
    /// The cluster for requests no service claims
    #[arg(long, default_value = "fallback")]
    fallback_cluster: String,
    /// Stub endpoints for clusters without --endpoint: this address, one port each counting up from --stub-port-base
    #[arg(long, default_value = "127.0.0.1")]
    stub_address: String,
    #[arg(long, default_value_t = 18100)]
    stub_port_base: u16,
    /// What Envoy does when the plugin's VM fails
    #[arg(long, default_value = "FAIL_RELOAD", value_parser = ["FAIL_RELOAD", "FAIL_CLOSED"])]
    failure_policy: String,
    /// Proxies of yours in front of this gateway whose X-Forwarded-For is trusted
    #[arg(long, default_value_t = 0)]
    trusted_hops: u32,
    /// While every endpoint of a non-default subset is down, send its requests to the service's default
    /// cluster (an aggregate cluster per subset, outlier detection, retries of connection failures)
    #[arg(long)]
    fallback_to_default: bool,
}

/// Runs the command with these arguments (the first is the program name) and
/// returns the exit code.
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    run_with(args, &mut stdout, &mut stderr)
}

/// As [`run`], writing to the given streams instead of the process's own
/// (for tests and embedders).
pub fn run_with<I, T>(args: I, stdout: &mut dyn Write, stderr: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are not errors.
            let text = error.render().to_string();
            return if error.use_stderr() {
                let _ = stderr.write_all(text.as_bytes());
                EXIT_USAGE
            } else {
                let _ = stdout.write_all(text.as_bytes());
                EXIT_OK
            };
        }
    };
    if let Command::Import { peer, file, lossy } = &cli.command {
        return import::run(*peer, file, *lossy, stdout, stderr);
    }
    let outcome = match cli.command {
        Command::Check { file, quiet } => check(&file, quiet),
        Command::Explain {
            file,
            request,
            json,
        } => explain(&file, &request, json),
        Command::Simulate(args) => simulate(&args),
        Command::Envoy(args) => envoy(&args),
        Command::Schema => Ok(schema::document_schema_text()),
        #[cfg(feature = "image")]
        Command::Image(command) => image_command(command, stderr),
        Command::Import { .. } => return EXIT_USAGE,
        #[cfg(feature = "rollout")]
        Command::Status(args) => status::status(&args).map_err(|message| Failure {
            code: EXIT_INVALID,
            message: format!("graylane: status: {message}"),
        }),
        #[cfg(feature = "rollout")]
        Command::Rollout(args) => rollout::command(&args, stdout).map_err(|(code, message)| Failure { code, message }),
    };
    match outcome {
        Ok(output) => {
            // A closed pipe (`graylane ... | head`) is not worth a panic.
            let _ = stdout.write_all(output.as_bytes());
            let _ = stdout.flush();
            EXIT_OK
        }
        Err(failure) => {
            let _ = writeln!(stderr, "{}", failure.message);
            failure.code
        }
    }
}

struct Failure {
    code: u8,
    message: String,
}

impl From<LoadError> for Failure {
    fn from(error: LoadError) -> Self {
        Failure {
            code: error.exit_code(),
            message: error.to_string(),
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message: format!("graylane: {}", message.into()),
    }
}

fn check(file: &Path, quiet: bool) -> Result<String, Failure> {
    let document = document::load(file)?;
    if quiet {
        return Ok(String::new());
    }
    let mut out = format!(
        "{}: ok ({}), {} service(s)\n",
        file.display(),
        match document.format {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        },
        document.rules.services.len()
    );
    for service in &document.rules.services {
        let shares = service.shares();
        let subsets: Vec<String> = service
            .subsets
            .iter()
            .zip(&shares)
            .enumerate()
            .map(|(index, (subset, share))| {
                let mut text = format!("{} -> {}", subset.name, subset.cluster);
                if index == service.default {
                    text.push_str(" (default)");
                }
                if subset.affinity {
                    text.push_str(" (affinity)");
                }
                if *share > 0 && !service.weight_table().is_empty() {
                    text.push_str(&format!(" {}", explain::percent(*share)));
                }
                if !subset.matches.is_empty() {
                    text.push_str(&format!(
                        ", {} match {}",
                        subset.matches.len(),
                        if subset.matches.len() == 1 {
                            "entry"
                        } else {
                            "entries"
                        }
                    ));
                }
                text
            })
            .collect();
        let mut subsets = subsets;
        if let Some(status) = service.unclaimed_status {
            let rest = graylane_core::split::BUCKETS - shares.iter().sum::<u32>();
            let mut text = format!("no default: unclaimed -> {status}");
            if !service.weight_table().is_empty() {
                text.push_str(&format!(" {}", explain::percent(rest)));
            }
            subsets.push(text);
        }
        out.push_str(&format!("  {}: {}\n", service.name, subsets.join("; ")));
        out.push_str(&explain::describe_rules(service));
    }
    Ok(out)
}

fn explain(file: &Path, request: &RequestArgs, json: bool) -> Result<String, Failure> {
    let spec = request.spec().map_err(usage)?;
    let document = document::load(file)?;
    if json {
        let decision = request::decide_spec(
            &document.rules,
            &spec,
            &mut graylane_core::split::WeylSequence::new(0),
        );
        return Ok(format!(
            "{}\n",
            request::outcome_json(&document.rules, &spec, &decision)
        ));
    }
    Ok(explain::explain(&document.rules, &spec))
}

fn read_requests(file: &Path) -> Result<Vec<RequestSpec>, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| usage(format!("{}: cannot read: {e}", file.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(number, line)| {
            RequestSpec::from_json_line(line)
                .map_err(|e| usage(format!("{}:{}: {e}", file.display(), number + 1)))
        })
        .collect()
}

fn population(args: &SimulateArgs) -> Result<Population, Failure> {
    if let Some(file) = &args.requests {
        return Ok(Population::Listed(read_requests(file)?));
    }
    let key = args
        .user_key
        .as_deref()
        .map(simulate::parse_key)
        .transpose()
        .map_err(usage)?;
    if args.request.is_empty() {
        return Ok(Population::PerService {
            count: args.count.or(args.users).unwrap_or(10_000),
            users: args.users,
            key,
        });
    }
    Ok(Population::Synthetic {
        base: args.request.spec().map_err(usage)?,
        count: args.count.or(args.users).unwrap_or(10_000),
        users: args.users,
        key,
    })
}

fn simulate(args: &SimulateArgs) -> Result<String, Failure> {
    let population = population(args)?;
    let per_service = matches!(population, Population::PerService { .. });
    let render = |text: String, json: serde_json::Value| {
        if args.json {
            format!("{json}\n")
        } else if per_service {
            format!(
                "no request described (--host, --path, -H…): each service gets its requests at its first host and path prefix\n{text}"
            )
        } else {
            text
        }
    };
    let nothing_reached = |files: &str| Failure {
        code: EXIT_INVALID,
        message: format!(
            "graylane: no request reaches a service of {files}: every one passes untouched; check --host and --path (graylane explain shows why)"
        ),
    };
    match (&args.compare, &args.file) {
        (Some(files), _) => {
            let [old_file, new_file] = files.as_slice() else {
                return Err(usage("--compare takes two files: OLD NEW"));
            };
            let old: Document = document::load(old_file)?;
            let new: Document = document::load(new_file)?;
            let requests = population.requests(&[&old.rules, &new.rules]);
            let comparison = simulate::compare(&old.rules, &new.rules, &requests, args.seed);
            if !comparison.reached_a_service() {
                return Err(nothing_reached(&format!(
                    "{} or {}",
                    old_file.display(),
                    new_file.display()
                )));
            }
            Ok(render(comparison.table(), comparison.json()))
        }
        (None, Some(file)) => {
            let document = document::load(file)?;
            let requests = population.requests(&[&document.rules]);
            let split = simulate::split(&document.rules, &requests, args.seed);
            if !split.reached_a_service() {
                return Err(nothing_reached(&file.display().to_string()));
            }
            Ok(render(split.table(), split.json()))
        }
        (None, None) => Err(usage("simulate needs a rule document or --compare OLD NEW")),
    }
}

fn envoy(args: &EnvoyArgs) -> Result<String, Failure> {
    let document = document::load(&args.file)?;
    let wasm = match &args.wasm {
        Some(wasm) => wasm.clone(),
        None => {
            let built = Path::new("target/wasm32-wasip1/release/graylane.wasm");
            std::path::absolute(built)
                .map_err(|e| usage(format!("cannot make the wasm path absolute: {e}")))?
                .display()
                .to_string()
        }
    };
    let mut endpoints: Vec<(String, envoy::Endpoint)> = Vec::new();
    for given in &args.endpoints {
        let (cluster, endpoint) = given
            .split_once('=')
            .ok_or_else(|| usage(format!("--endpoint {given:?}: give CLUSTER=HOST:PORT")))?;
        let endpoint = endpoint
            .parse()
            .map_err(|e| usage(format!("--endpoint {e}")))?;
        endpoints.push((cluster.to_string(), endpoint));
    }
    let names = envoy_cluster_names(&document, &args.fallback_cluster);
    if let Some((unknown, _)) = endpoints.iter().find(|(cluster, _)| !names.contains(cluster)) {
        return Err(usage(format!(
            "--endpoint {unknown}=…: no such cluster; the configuration has: {}",
            names.join(", ")
        )));
    }
    let mut bootstrap = envoy::Bootstrap::new(document.json_pretty(), &document.rules.cluster_header, &wasm);
    bootstrap.listen = args.listen;
    bootstrap.admin = (!args.no_admin).then_some(args.admin);
    bootstrap.fallback_cluster = args.fallback_cluster.clone();
    bootstrap.failure_policy = args.failure_policy.clone();
    bootstrap.trusted_hops = args.trusted_hops;
    if args.fallback_to_default {
        bootstrap.fallbacks = fallbacks(&document.rules).map_err(usage)?;
    }
    if document.rules.services.iter().any(|service| service.mirror.is_some()) {
        bootstrap.mirror_header = Some(document.rules.mirror_header.clone());
    }
    bootstrap.reads_body = document.rules.reads_form;
    // Lane cookies travel as pin cookies do: the same header, the same copy.
    if document
        .rules
        .services
        .iter()
        .any(|service| service.pin.is_some() || service.affinity.is_some())
    {
        bootstrap.pin_header = Some(document.rules.pin_header.clone());
    }
    // The etcd watch is a gRPC stream: its cluster speaks HTTP/2.
    let grpc_cluster = document
        .extensions
        .source
        .as_ref()
        .filter(|source| source.uses_grpc())
        .map(|source| source.cluster.clone());
    let mut stub_port = args.stub_port_base;
    for name in names {
        let mut given: Vec<envoy::Endpoint> = endpoints
            .iter()
            .filter(|(cluster, _)| *cluster == name)
            .map(|(_, endpoint)| endpoint.clone())
            .collect();
        if given.is_empty() {
            given.push(envoy::Endpoint {
                host: args.stub_address.clone(),
                port: stub_port,
            });
            stub_port = stub_port.saturating_add(1);
        }
        bootstrap.clusters.push(envoy::Cluster {
            http2: grpc_cluster.as_ref() == Some(&name),
            name,
            endpoints: given,
        });
    }
    let header = format!(
        "# Envoy configuration for the graylane rules in {}, written by\n\
         #   {}\n\
         # Check it before you ship it: envoy --mode validate -c THIS_FILE (loads\n\
         # the plugin and runs its configuration check).\n",
        args.file.display(),
        envoy_command_line(args, &wasm),
    );
    bootstrap.to_yaml(&header).map_err(|e| Failure {
        code: EXIT_INVALID,
        message: format!("graylane: cannot write the Envoy config: {e}"),
    })
}

/// The command that writes this configuration again: the flags that differ
/// from their defaults, in a fixed order.
fn envoy_command_line(args: &EnvoyArgs, wasm: &str) -> String {
    let mut line = format!("graylane envoy {} --wasm {wasm}", args.file.display());
    if args.listen.to_string() != "127.0.0.1:10000" {
        line.push_str(&format!(" --listen {}", args.listen));
    }
    if args.no_admin {
        line.push_str(" --no-admin");
    } else if args.admin.to_string() != "127.0.0.1:9901" {
        line.push_str(&format!(" --admin {}", args.admin));
    }
    for endpoint in &args.endpoints {
        line.push_str(&format!(" --endpoint {endpoint}"));
    }
    if args.fallback_cluster != "fallback" {
        line.push_str(&format!(" --fallback-cluster {}", args.fallback_cluster));
    }
    if args.stub_address != "127.0.0.1" {
        line.push_str(&format!(" --stub-address {}", args.stub_address));
    }
    if args.stub_port_base != 18100 {
        line.push_str(&format!(" --stub-port-base {}", args.stub_port_base));
    }
    if args.failure_policy != "FAIL_RELOAD" {
        line.push_str(&format!(" --failure-policy {}", args.failure_policy));
    }
    if args.trusted_hops != 0 {
        line.push_str(&format!(" --trusted-hops {}", args.trusted_hops));
    }
    if args.fallback_to_default {
        line.push_str(" --fallback-to-default");
    }
    line
}

/// Each non-default subset cluster and the default cluster of its service;
/// a cluster that two services would send to different defaults cannot
/// fall back to both.
fn fallbacks(rules: &graylane_core::rules::Rules) -> Result<Vec<envoy::Fallback>, String> {
    let mut fallbacks: Vec<envoy::Fallback> = Vec::new();
    for service in &rules.services {
        let Some(default) = service.subsets.get(service.default) else {
            continue;
        };
        for subset in &service.subsets {
            if subset.cluster == default.cluster {
                continue;
            }
            match fallbacks.iter().find(|f| f.cluster == subset.cluster) {
                Some(known) if known.default != default.cluster => {
                    return Err(format!(
                        "--fallback-to-default: cluster {} would fall back to both {} and {}",
                        subset.cluster, known.default, default.cluster
                    ))
                }
                Some(_) => {}
                None => fallbacks.push(envoy::Fallback {
                    cluster: subset.cluster.clone(),
                    default: default.cluster.clone(),
                }),
            }
        }
    }
    Ok(fallbacks)
}

/// Every cluster the configuration needs: those the rules name, the rules
/// source's, and the fallback.
fn envoy_cluster_names(document: &Document, fallback: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let source = document.extensions.source.as_ref().map(|s| s.cluster.as_str());
    let all = document
        .rules
        .services
        .iter()
        .flat_map(|service| service.subsets.iter().map(|s| s.cluster.as_str()))
        .chain(source)
        .chain(std::iter::once(fallback));
    for name in all {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

#[cfg(feature = "image")]
fn image_command(command: ImageCommand, stderr: &mut dyn Write) -> Result<String, Failure> {
    let failed = |error: image::ImageError| Failure {
        code: EXIT_INVALID,
        message: format!("graylane: {error}"),
    };
    // An unreadable file is a usage error (2); a file that is no .wasm, a
    // layout that cannot be written or a push that fails, 1.
    let load = |path: &Path| {
        let bytes = std::fs::read(path).map_err(|e| usage(format!("{}: cannot read: {e}", path.display())))?;
        image::Image::from_wasm(&bytes, &path.display().to_string()).map_err(failed)
    };
    match command {
        ImageCommand::Build { wasm, output, tag } => {
            let image = load(&wasm)?;
            let tag = tag.unwrap_or_else(|| graylane_core::VERSION.to_string());
            image.write_layout(&output, &tag).map_err(failed)?;
            Ok(format!("{}\n", image.digest()))
        }
        ImageCommand::Digest { wasm } => {
            let image = load(&wasm)?;
            Ok(format!("{}\n", image.digest()))
        }
        ImageCommand::Push {
            wasm,
            reference,
            username,
            password,
            monolithic,
            plain_http,
        } => {
            let image = load(&wasm)?;
            let credentials = match (username, password) {
                (Some(username), Some(password)) => image::Credentials::Given { username, password },
                _ => image::Credentials::DockerConfig,
            };
            let options = image::PushOptions {
                credentials,
                monolithic,
                plain_http,
            };
            let pushed = image::push(&image, &reference, &options).map_err(failed)?;
            for note in &pushed.notes {
                let _ = writeln!(stderr, "graylane: note: {note}");
            }
            let _ = writeln!(
                stderr,
                "graylane: pushed {reference} ({} of 2 blobs sent, {} ms)",
                pushed.blobs_sent,
                pushed.elapsed.as_millis()
            );
            Ok(format!("{}\n", pushed.digest))
        }
    }
}
