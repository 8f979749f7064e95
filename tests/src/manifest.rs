//! The subset of Spin's manifest (`spin.toml`, `spin_manifest_version = 2`) the
//! harness needs: variables, HTTP triggers, components, their allow-lists,
//! variables and dependencies. Templates (`{{ name }}`) resolve as in Spin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub spin_manifest_version: u32,
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    pub trigger: Triggers,
    #[serde(default)]
    pub component: BTreeMap<String, ComponentDecl>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpTrigger {
    pub route: String,
    pub component: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDecl {
    pub source: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub dependencies: BTreeMap<String, DependencyDecl>,
    #[serde(default)]
    pub dependencies_inherit_configuration: bool,
    #[serde(default)]
    pub build: Option<BuildDecl>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependencyDecl {
    pub path: String,
    #[serde(default)]
    pub export: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BuildDecl {
    pub command: String,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub watch: Vec<String>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let manifest: Manifest = toml::from_str(text)?;
        if manifest.spin_manifest_version != 2 {
            bail!("only spin_manifest_version = 2 is supported");
        }
        for name in manifest.variables.keys() {
            validate_variable_name(name)?;
        }
        for trigger in &manifest.trigger.http {
            if !manifest.component.contains_key(&trigger.component) {
                bail!(
                    "trigger for route {} names unknown component {:?}",
                    trigger.route,
                    trigger.component
                );
            }
        }
        for (id, component) in &manifest.component {
            for name in component.variables.keys() {
                validate_variable_name(name)
                    .with_context(|| format!("component {id:?} variables"))?;
            }
        }
        Ok(manifest)
    }
}

/// Spin's rule: lowercase ASCII letters, digits and underscores, starting with a letter.
pub fn validate_variable_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        bail!("invalid variable name {name:?}: use lowercase letters, digits and underscores, starting with a letter")
    }
}

/// Application variable values: defaults, then `SPIN_VARIABLE_<NAME>`-style
/// overrides, as Spin's environment provider resolves them.
#[derive(Debug, Clone, Default)]
pub struct ResolvedVariables(BTreeMap<String, String>);

impl ResolvedVariables {
    /// `overrides` are keyed by variable name (what `SPIN_VARIABLE_<NAME>` sets).
    pub fn resolve(manifest: &Manifest, overrides: &BTreeMap<String, String>) -> Result<Self> {
        let mut values = BTreeMap::new();
        for (name, decl) in &manifest.variables {
            let value = overrides
                .get(name)
                .cloned()
                .or_else(|| decl.default.clone());
            match value {
                Some(v) => {
                    values.insert(name.clone(), v);
                }
                None if decl.required => bail!("required variable {name:?} has no value"),
                None => {}
            }
        }
        for name in overrides.keys() {
            if !manifest.variables.contains_key(name) {
                bail!("override for undeclared variable {name:?}");
            }
        }
        Ok(Self(values))
    }

    /// Overrides taken from this process's `SPIN_VARIABLE_*` environment.
    pub fn env_overrides(manifest: &Manifest) -> BTreeMap<String, String> {
        manifest
            .variables
            .keys()
            .filter_map(|name| {
                std::env::var(format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()))
                    .ok()
                    .map(|v| (name.clone(), v))
            })
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Fills `{{ name }}` placeholders; an unknown name is an error, as in Spin.
    pub fn render(&self, template: &str) -> Result<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .with_context(|| format!("unterminated template in {template:?}"))?;
            let name = after[..end].trim();
            validate_variable_name(name)?;
            let value = self.get(name).with_context(|| {
                format!("template {template:?} names variable {name:?} which has no value")
            })?;
            out.push_str(value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The directory a manifest's relative paths are relative to.
pub fn manifest_dir(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
        spin_manifest_version = 2
        [application]
        name = "t"
        [variables]
        redis_address = { default = "redis://127.0.0.1:6379" }
        api_key = { required = true, secret = true }
        [[trigger.http]]
        route = "/health/..."
        component = "ops"
        [component.ops]
        source = "ops.wasm"
        allowed_outbound_hosts = ["{{ redis_address }}"]
        [component.ops.variables]
        redis_address = "{{ redis_address }}"
    "#;

    #[test]
    fn required_variables_must_be_given() {
        let manifest = Manifest::parse(MANIFEST).unwrap();
        assert!(ResolvedVariables::resolve(&manifest, &BTreeMap::new()).is_err());
        let overrides = BTreeMap::from([("api_key".to_string(), "k".to_string())]);
        let vars = ResolvedVariables::resolve(&manifest, &overrides).unwrap();
        assert_eq!(vars.get("redis_address"), Some("redis://127.0.0.1:6379"));
        assert_eq!(vars.get("api_key"), Some("k"));
    }

    #[test]
    fn overrides_win_over_defaults_and_must_be_declared() {
        let manifest = Manifest::parse(MANIFEST).unwrap();
        let overrides = BTreeMap::from([
            ("api_key".to_string(), "k".to_string()),
            (
                "redis_address".to_string(),
                "redis://10.0.0.1:7000".to_string(),
            ),
        ]);
        let vars = ResolvedVariables::resolve(&manifest, &overrides).unwrap();
        assert_eq!(vars.get("redis_address"), Some("redis://10.0.0.1:7000"));
        let bad = BTreeMap::from([("nope".to_string(), "x".to_string())]);
        assert!(ResolvedVariables::resolve(&manifest, &bad).is_err());
    }

    #[test]
    fn templates_render_and_reject_unknown_names() {
        let manifest = Manifest::parse(MANIFEST).unwrap();
        let overrides = BTreeMap::from([("api_key".to_string(), "k".to_string())]);
        let vars = ResolvedVariables::resolve(&manifest, &overrides).unwrap();
        assert_eq!(
            vars.render("x-{{redis_address}}-{{ api_key }}").unwrap(),
            "x-redis://127.0.0.1:6379-k"
        );
        assert!(vars.render("{{ missing }}").is_err());
        assert!(vars.render("{{ api_key").is_err());
    }

    #[test]
    fn unknown_trigger_component_is_an_error() {
        let text = MANIFEST.replace("component = \"ops\"", "component = \"nope\"");
        assert!(Manifest::parse(&text).is_err());
    }

    #[test]
    fn variable_names_follow_spin_rules() {
        assert!(validate_variable_name("top_k").is_ok());
        assert!(validate_variable_name("TopK").is_err());
        assert!(validate_variable_name("1k").is_err());
        assert!(validate_variable_name("top-k").is_err());
    }
}
