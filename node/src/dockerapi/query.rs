//! Query parameters as Docker clients send them: booleans as `1/0/true/false/True/False`,
//! numbers, and `filters` in both JSON shapes (`{"label":{"k=v":true}}` from the CLI,
//! `{"label":["k=v"]}` from docker-py). Pure, unit-tested.

use super::http::ApiError;
use std::collections::BTreeMap;

/// Most query parameters read from one request.
pub const MAX_PARAMS: usize = 64;
/// Most values in all filters of one request.
pub const MAX_FILTER_VALUES: usize = 64;

/// The query of one request (of a repeated key the first value counts, as with Go's
/// `FormValue`, which the Docker daemon uses).
#[derive(Debug, Default, Clone)]
pub struct Query(BTreeMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if map.len() >= MAX_PARAMS {
                return Err(ApiError::bad_request(format!("more than {MAX_PARAMS} query parameters")));
            }
            map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Ok(Self(map))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Docker's rule (`httputils.BoolValue`): absent, empty, `0`, `no`, `false` or `none`
    /// (any case) is false, anything else true.
    pub fn bool(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "no" | "false" | "none"),
        }
    }

    /// An integer parameter; absent or empty → `None`.
    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key).map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v:?} is not an integer"))),
        }
    }

    /// The `filters` parameter.
    pub fn filters(&self) -> Result<Filters, ApiError> {
        match self.get("filters") {
            None => Ok(Filters::default()),
            Some(text) => Filters::parse(text),
        }
    }
}

/// Parsed `filters`: each key with its values (values of one key are alternatives for
/// most keys, and all required for `label`, as in Docker).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters(pub BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let bad = |why: String| ApiError::bad_request(format!("invalid filters {text:?}: {why}"));
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let obj = value.as_object().ok_or_else(|| bad("want a JSON object of filter names".into()))?;
        let mut out = BTreeMap::new();
        let mut count = 0;
        for (key, values) in obj {
            let list: Vec<String> = match values {
                // The CLI's shape: {"label": {"k=v": true}}.
                serde_json::Value::Object(m) => m.iter().filter(|(_, on)| on.as_bool() != Some(false)).map(|(k, _)| k.clone()).collect(),
                // docker-py's shape: {"label": ["k=v"]}.
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).ok_or_else(|| bad(format!("the values of {key} must be strings"))))
                    .collect::<Result<_, _>>()?,
                serde_json::Value::String(s) => vec![s.clone()],
                _ => return Err(bad(format!("the values of {key} must be a list or an object"))),
            };
            count += list.len();
            if count > MAX_FILTER_VALUES {
                return Err(bad(format!("more than {MAX_FILTER_VALUES} filter values")));
            }
            out.insert(key.clone(), list);
        }
        Ok(Self(out))
    }

    pub fn get(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    /// Refuses a filter key outside `supported`, naming the ones that are.
    pub fn only(&self, supported: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !supported.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(ApiError::bad_request(format!(
                "invalid filter '{k}': shoal supports {} here",
                supported.join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_follow_docker() {
        let q = Query::parse(Some("a=1&b=0&c=true&d=False&e=&f=True&g=no&h=yes")).expect("query");
        assert!(q.bool("a") && q.bool("c") && q.bool("f") && q.bool("h"));
        assert!(!q.bool("b") && !q.bool("d") && !q.bool("e") && !q.bool("g") && !q.bool("absent"));
    }

    #[test]
    fn integers_are_checked() {
        let q = Query::parse(Some("limit=-1&t=x&n=")).expect("query");
        assert_eq!(q.int("limit").expect("int"), Some(-1));
        assert_eq!(q.int("n").expect("empty"), None);
        assert!(q.int("t").expect_err("not a number").message.contains("not an integer"));
    }

    #[test]
    fn both_filter_shapes_parse_the_same() {
        let cli = Filters::parse(r#"{"label":{"a=1":true,"b":true},"name":{"web":true}}"#).expect("cli");
        let py = Filters::parse(r#"{"label":["a=1","b"],"name":["web"]}"#).expect("py");
        assert_eq!(cli, py);
        assert_eq!(cli.get("label"), ["a=1".to_string(), "b".to_string()]);
        assert!(cli.get("status").is_empty());
        let q = Query::parse(Some("filters=%7B%22status%22%3A%5B%22exited%22%5D%7D")).expect("query");
        assert_eq!(q.filters().expect("filters").get("status"), ["exited".to_string()]);
    }

    #[test]
    fn bad_filters_are_400_and_unknown_keys_are_named() {
        for bad in ["{", "[1]", r#"{"label":[1]}"#, r#"{"label":5}"#] {
            assert_eq!(Filters::parse(bad).expect_err(bad).status, hyper::StatusCode::BAD_REQUEST, "{bad}");
        }
        let many = format!("{{\"label\":[{}]}}", (0..=MAX_FILTER_VALUES).map(|i| format!("\"k{i}\"")).collect::<Vec<_>>().join(","));
        assert!(Filters::parse(&many).is_err());
        let f = Filters::parse(r#"{"ancestor":["x"]}"#).expect("parse");
        let e = f.only(&["label", "name"]).expect_err("unknown");
        assert!(e.message.contains("'ancestor'") && e.message.contains("label, name"), "{}", e.message);
    }

    #[test]
    fn too_many_parameters_are_refused() {
        let q: String = (0..=MAX_PARAMS).map(|i| format!("k{i}=1&")).collect();
        assert!(Query::parse(Some(&q)).is_err());
    }
}
