//! Edits of the live rules document (`{"services": [...]}` as the gateways
//! fetch it) that a rollout makes: one service's subset weight and default.
//! Every edit is checked with the plugin's compiler before it is written.

use serde_json::Value;

use super::plan::weight_json;

/// Where the item named `name` stands in the list `items`.
fn position(items: Option<&Value>, name: &str) -> Option<usize> {
    items?
        .as_array()?
        .iter()
        .position(|item| item.get("name").and_then(Value::as_str) == Some(name))
}

fn no_service(name: &str) -> String {
    format!("the rules have no service {name:?}")
}

fn service_mut<'d>(document: &'d mut Value, name: &str) -> Result<&'d mut Value, String> {
    let at = position(document.get("services"), name).ok_or_else(|| no_service(name))?;
    document
        .get_mut("services")
        .and_then(|services| services.get_mut(at))
        .ok_or_else(|| no_service(name))
}

/// The service's entry, read only.
pub fn service<'d>(document: &'d Value, name: &str) -> Result<&'d Value, String> {
    let at = position(document.get("services"), name).ok_or_else(|| no_service(name))?;
    document
        .get("services")
        .and_then(|services| services.get(at))
        .ok_or_else(|| no_service(name))
}

fn subset<'s>(service: &'s Value, name: &str) -> Result<&'s Value, String> {
    position(service.get("subsets"), name)
        .and_then(|at| service.get("subsets")?.get(at))
        .ok_or_else(|| format!("the service has no subset {name:?}"))
}

/// The service's default subset.
pub fn default_of(document: &Value, name: &str) -> Result<String, String> {
    service(document, name)?
        .get("default")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("service {name:?} has no default"))
}

/// A subset's weight in hundredths (0 when absent).
pub fn weight_of(document: &Value, name: &str, subset_name: &str) -> Result<u32, String> {
    let weight = subset(service(document, name)?, subset_name)?
        .get("weight")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    Ok((weight * 100.0).round() as u32)
}

/// A subset's upstream cluster.
pub fn cluster_of(document: &Value, name: &str, subset_name: &str) -> Result<String, String> {
    subset(service(document, name)?, subset_name)?
        .get("cluster")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("subset {subset_name:?} has no cluster"))
}

/// Sets a subset's weight (hundredths); 0 removes the field.
pub fn set_weight(document: &mut Value, name: &str, subset_name: &str, hundredths: u32) -> Result<(), String> {
    let service = service_mut(document, name)?;
    let at = position(service.get("subsets"), subset_name)
        .ok_or_else(|| format!("service {name:?} has no subset {subset_name:?}"))?;
    let subset = service
        .get_mut("subsets")
        .and_then(|subsets| subsets.get_mut(at))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("service {name:?} has no subset {subset_name:?}"))?;
    if hundredths == 0 {
        subset.remove("weight");
    } else {
        subset.insert("weight".into(), weight_json(hundredths));
    }
    Ok(())
}

/// Makes `subset_name` the default.
pub fn set_default(document: &mut Value, name: &str, subset_name: &str) -> Result<(), String> {
    let service = service_mut(document, name)?;
    subset(service, subset_name)?;
    if let Some(object) = service.as_object_mut() {
        object.insert("default".into(), Value::String(subset_name.to_string()));
    }
    Ok(())
}

/// Refuses a document the gateways would refuse: compiled by the plugin's
/// own compiler (without the `version` and notes a fetched document may
/// carry, which the inline schema does not have).
pub fn check(document: &Value) -> Result<(), String> {
    let services = document.get("services").cloned().unwrap_or(Value::Null);
    let inline = serde_json::json!({ "services": services });
    graylane_core::config::compile(inline.to_string().as_bytes())
        .map(|_| ())
        .map_err(|errors| format!("the new rules would be refused: {errors}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn weights_and_defaults() {
        let mut document = json!({"version": 3, "services": [{"name": "b", "default": "stable", "subsets": [
            {"name": "stable", "cluster": "b-stable"}, {"name": "canary", "cluster": "b-canary", "weight": 5}]}]});
        assert_eq!(weight_of(&document, "b", "canary").unwrap(), 500);
        set_weight(&mut document, "b", "canary", 1250).unwrap();
        assert_eq!(document["services"][0]["subsets"][1]["weight"], json!(12.5));
        set_default(&mut document, "b", "canary").unwrap();
        set_weight(&mut document, "b", "canary", 0).unwrap();
        assert_eq!(default_of(&document, "b").unwrap(), "canary");
        assert!(document["services"][0]["subsets"][1].get("weight").is_none());
        check(&document).unwrap();
        assert_eq!(cluster_of(&document, "b", "stable").unwrap(), "b-stable");
        assert!(set_default(&mut document, "b", "nope").unwrap_err().contains("no subset"));
        assert!(weight_of(&document, "x", "canary").unwrap_err().contains("no service"));
        set_weight(&mut document, "b", "stable", 9000).unwrap();
        set_default(&mut document, "b", "canary").unwrap();
        document["services"][0]["subsets"][1]["weight"] = json!(20);
        document["services"][0]["subsets"][0]["weight"] = json!(90);
        document["services"][0]["default"] = json!("nope");
        assert!(check(&document).unwrap_err().contains("would be refused"));
    }
}
