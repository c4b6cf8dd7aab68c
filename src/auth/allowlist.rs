//! A key's model allowlist: exact names and `*` globs (`llama-*`, `*-instruct`, `org/*`).

use std::collections::HashSet;

/// The models a key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelAllowlist {
    exact: HashSet<String>,
    globs: Vec<Glob>,
}

/// A pattern with at least one `*`, which matches any run of characters (`/` included).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    /// The pattern split at its `*`s: the first part is a prefix, the last a suffix, the
    /// others must follow in order between them.
    parts: Vec<String>,
}

impl Glob {
    fn matches(&self, name: &str) -> bool {
        let (Some(first), Some(last)) = (self.parts.first(), self.parts.last()) else {
            return false;
        };
        if name.len() < first.len() + last.len()
            || !name.starts_with(first.as_str())
            || !name.ends_with(last.as_str())
        {
            return false;
        }
        let mut rest = &name[first.len()..name.len() - last.len()];
        for part in &self.parts[1..self.parts.len() - 1] {
            match rest.find(part.as_str()) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

impl ModelAllowlist {
    /// From the config's list; a pattern is an exact name unless it holds `*`.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut exact = HashSet::new();
        let mut globs = Vec::new();
        for p in patterns {
            if p.is_empty() {
                return Err("a model pattern is empty".into());
            }
            if p.contains('*') {
                globs.push(Glob {
                    parts: p.split('*').map(str::to_string).collect(),
                });
            } else {
                exact.insert(p.clone());
            }
        }
        Ok(ModelAllowlist { exact, globs })
    }

    pub fn allows(&self, model: &str) -> bool {
        self.exact.contains(model) || self.globs.iter().any(|g| g.matches(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(p: &[&str]) -> ModelAllowlist {
        ModelAllowlist::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn exact_names_and_globs() {
        let l = list(&["gpt-4o-mini", "llama-*", "*-instruct", "org/*/v*", "*"]);
        assert!(l.allows("gpt-4o-mini"));
        assert!(l.allows("anything"), "`*` allows everything");
        let l = list(&["gpt-4o-mini", "llama-*", "*-instruct", "org/*/v*"]);
        assert!(l.allows("llama-3-8b"));
        assert!(l.allows("llama-"));
        assert!(l.allows("qwen-instruct"));
        assert!(l.allows("org/team/v2"));
        assert!(!l.allows("gpt-4o"));
        assert!(!l.allows("my-llama-3"));
        assert!(!l.allows("instruct"));
        assert!(!l.allows("org/v"), "prefix and suffix may not overlap");
        assert!(!l.allows("org/team/x"));
    }

    #[test]
    fn empty_patterns_are_rejected() {
        assert!(ModelAllowlist::new(&["".to_string()]).is_err());
    }
}
