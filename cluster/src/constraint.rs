//! Placement constraints, as users write them: `node.labels.zone==attic`,
//! `node.hostname!=pi3`, `node.arch==aarch64`, `node.id==<id>`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Field {
    Label(String),
    Hostname,
    Arch,
    Id,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Op {
    Eq,
    Ne,
}

/// One parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Constraint {
    pub field: Field,
    pub op: Op,
    pub value: String,
}

/// Why a constraint expression is not valid; the message shows the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("constraint `{0}` needs `==` or `!=`, e.g. node.labels.zone==attic")]
    NoOperator(String),
    #[error("constraint `{0}`: unknown field; use node.labels.KEY, node.hostname, node.arch or node.id")]
    UnknownField(String),
    #[error("constraint `{0}`: the value is empty")]
    EmptyValue(String),
    #[error("constraint `{0}`: the label key is empty")]
    EmptyLabel(String),
    #[error("constraint is too long (at most {MAX_CONSTRAINT_LEN} characters)")]
    TooLong,
}

/// Longest expression accepted (labels are at most 63 + 128 characters).
pub const MAX_CONSTRAINT_LEN: usize = 256;

/// The node facts constraints are evaluated against.
pub trait NodeFields {
    fn label(&self, key: &str) -> Option<&str>;
    fn hostname(&self) -> &str;
    fn arch(&self) -> &str;
    fn id_text(&self) -> String;
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Self, ConstraintError> {
        let text = text.trim();
        if text.len() > MAX_CONSTRAINT_LEN {
            return Err(ConstraintError::TooLong);
        }
        let (lhs, op, rhs) = if let Some((l, r)) = text.split_once("!=") {
            (l, Op::Ne, r)
        } else if let Some((l, r)) = text.split_once("==") {
            (l, Op::Eq, r)
        } else {
            return Err(ConstraintError::NoOperator(text.to_string()));
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue(text.to_string()));
        }
        let field = match lhs {
            "node.hostname" => Field::Hostname,
            "node.arch" => Field::Arch,
            "node.id" => Field::Id,
            _ => match lhs.strip_prefix("node.labels.") {
                Some("") => return Err(ConstraintError::EmptyLabel(text.to_string())),
                Some(key) => Field::Label(key.to_string()),
                None => return Err(ConstraintError::UnknownField(text.to_string())),
            },
        };
        Ok(Self { field, op, value: value.to_string() })
    }

    /// Whether `node` satisfies the constraint. A missing label never equals anything, and
    /// so always satisfies `!=` (as in Docker Swarm).
    pub fn matches(&self, node: &impl NodeFields) -> bool {
        let actual: Option<String> = match &self.field {
            Field::Label(k) => node.label(k).map(str::to_string),
            Field::Hostname => Some(node.hostname().to_string()),
            Field::Arch => Some(node.arch().to_string()),
            Field::Id => Some(node.id_text()),
        };
        let equal = match (&self.field, actual) {
            (Field::Id, Some(a)) => a.starts_with(&self.value) && self.value.len() >= 6,
            (_, Some(a)) => a == self.value,
            (_, None) => false,
        };
        match self.op {
            Op::Eq => equal,
            Op::Ne => !equal,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = match &self.field {
            Field::Label(k) => format!("node.labels.{k}"),
            Field::Hostname => "node.hostname".into(),
            Field::Arch => "node.arch".into(),
            Field::Id => "node.id".into(),
        };
        let op = match self.op {
            Op::Eq => "==",
            Op::Ne => "!=",
        };
        write!(f, "{field}{op}{}", self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct N {
        labels: BTreeMap<String, String>,
        host: String,
        arch: String,
    }

    impl NodeFields for N {
        fn label(&self, key: &str) -> Option<&str> {
            self.labels.get(key).map(String::as_str)
        }
        fn hostname(&self) -> &str {
            &self.host
        }
        fn arch(&self) -> &str {
            &self.arch
        }
        fn id_text(&self) -> String {
            "abcdef0123456789".into()
        }
    }

    fn pi() -> N {
        N { labels: BTreeMap::from([("zone".into(), "attic".into())]), host: "pi3".into(), arch: "aarch64".into() }
    }

    #[test]
    fn parses_and_matches_the_documented_forms() {
        let c = |s| Constraint::parse(s).expect(s);
        assert!(c("node.labels.zone==attic").matches(&pi()));
        assert!(!c("node.labels.zone!=attic").matches(&pi()));
        assert!(c("node.labels.gpu!=yes").matches(&pi()), "missing label satisfies !=");
        assert!(!c("node.labels.gpu==yes").matches(&pi()));
        assert!(!c("node.hostname!=pi3").matches(&pi()));
        assert!(c("node.arch == aarch64").matches(&pi()));
        assert!(c("node.id==abcdef01").matches(&pi()));
        assert!(!c("node.id==abc").matches(&pi()), "too-short id prefixes never match");
        assert_eq!(c("node.labels.zone==attic").to_string(), "node.labels.zone==attic");
    }

    #[test]
    fn bad_syntax_is_explained() {
        assert!(matches!(Constraint::parse("node.labels.zone=attic"), Err(ConstraintError::NoOperator(_))));
        assert!(matches!(Constraint::parse("node.color==red"), Err(ConstraintError::UnknownField(_))));
        assert!(matches!(Constraint::parse("node.labels.==x"), Err(ConstraintError::EmptyLabel(_))));
        assert!(matches!(Constraint::parse("node.arch=="), Err(ConstraintError::EmptyValue(_))));
        assert_eq!(Constraint::parse(&"x".repeat(300)), Err(ConstraintError::TooLong));
    }
}
