//! Which endpoint a request is for: the optional `/vX.Y` prefix (checked against the
//! versions shoal speaks), then the method and path segments. Pure, unit-tested. Every
//! path shoal does not serve is answered 501 with the method and path it was sent, so a
//! user sees which part of the Docker API is missing.

use super::http::ApiError;
use hyper::{Method, StatusCode};

/// The API version shoal serves (what `docker` 28 and docker-py negotiate down to).
pub const API_VERSION: ApiVersion = ApiVersion { major: 1, minor: 41 };
/// The oldest version accepted: older clients expect other shapes (e.g. `docker run`'s
/// wait without conditions).
pub const MIN_API_VERSION: ApiVersion = ApiVersion { major: 1, minor: 24 };
/// Longest path accepted, in bytes (ids and names are short).
pub const MAX_PATH_LEN: usize = 1024;

/// `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl ApiVersion {
    /// `1.41` → version; anything else → `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.split_once('.')?;
        let digits = |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(major) || !digits(minor) {
            return None;
        }
        Some(Self { major: major.parse().ok()?, minor: minor.parse().ok()? })
    }
}

/// The endpoints shoal serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Ping,
    Version,
    Info,
    ContainerList,
    ContainerCreate,
    ContainerInspect(String),
    ContainerStart(String),
    ContainerStop(String),
    ContainerRestart(String),
    ContainerKill(String),
    ContainerWait(String),
    ContainerLogs(String),
    ContainerDelete(String),
    NetworkList,
    NetworkCreate,
    NetworkInspect(String),
    NetworkDelete(String),
    NetworkConnect(String),
    NetworkDisconnect(String),
    ImageList,
    ImageInspect(String),
    ImageCreate,
    Events,
    ContainerAttach(String),
    /// `POST /containers/{id}/exec`.
    ExecCreate(String),
    /// `/exec/{id}/…`: the exec's id.
    ExecStart(String),
    ExecInspect(String),
    ExecResize(String),
}

impl Endpoint {
    /// Long streams are not bound by the request timeout (they end when the container
    /// does, or when the client goes).
    pub fn is_stream(&self) -> bool {
        matches!(
            self,
            Endpoint::ContainerWait(_) | Endpoint::ContainerLogs(_) | Endpoint::ContainerAttach(_) | Endpoint::ExecStart(_) | Endpoint::ImageCreate | Endpoint::Events
        )
    }
}

/// Splits off the `/vX.Y` prefix (refusing a version shoal does not speak) and finds the
/// endpoint. `path` is the request path without the query.
pub fn route(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
    if path.len() > MAX_PATH_LEN {
        return Err(ApiError::bad_request(format!("the request path is longer than {MAX_PATH_LEN} bytes")));
    }
    let mut rest = path;
    if let Some(after) = path.strip_prefix("/v") {
        let (first, tail) = after.split_once('/').map_or((after, ""), |(v, t)| (v, t));
        if let Some(v) = ApiVersion::parse(first) {
            if v > API_VERSION {
                return Err(ApiError::bad_request(format!(
                    "client version {v} is too new. Maximum supported API version is {API_VERSION}"
                )));
            }
            if v < MIN_API_VERSION {
                return Err(ApiError::bad_request(format!(
                    "client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
                )));
            }
            rest = &path[path.len() - tail.len() - 1..];
            if tail.is_empty() {
                rest = "/";
            }
        }
    }
    let segments: Vec<String> = rest.split('/').filter(|s| !s.is_empty()).map(decode_segment).collect::<Result<_, _>>()?;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let id = |s: &str| s.to_string();
    let endpoint = match (method.clone(), seg.as_slice()) {
        (Method::GET | Method::HEAD, ["_ping"]) => Some(Endpoint::Ping),
        (Method::GET, ["version"]) => Some(Endpoint::Version),
        (Method::GET, ["info"]) => Some(Endpoint::Info),
        (Method::GET, ["containers", "json"]) => Some(Endpoint::ContainerList),
        (Method::POST, ["containers", "create"]) => Some(Endpoint::ContainerCreate),
        (Method::GET, ["containers", c, "json"]) => Some(Endpoint::ContainerInspect(id(c))),
        (Method::POST, ["containers", c, "start"]) => Some(Endpoint::ContainerStart(id(c))),
        (Method::POST, ["containers", c, "stop"]) => Some(Endpoint::ContainerStop(id(c))),
        (Method::POST, ["containers", c, "restart"]) => Some(Endpoint::ContainerRestart(id(c))),
        (Method::POST, ["containers", c, "kill"]) => Some(Endpoint::ContainerKill(id(c))),
        (Method::POST, ["containers", c, "wait"]) => Some(Endpoint::ContainerWait(id(c))),
        (Method::GET, ["containers", c, "logs"]) => Some(Endpoint::ContainerLogs(id(c))),
        (Method::DELETE, ["containers", c]) => Some(Endpoint::ContainerDelete(id(c))),
        (Method::POST, ["containers", c, "attach"]) => Some(Endpoint::ContainerAttach(id(c))),
        (Method::POST, ["containers", c, "exec"]) => Some(Endpoint::ExecCreate(id(c))),
        (Method::POST, ["exec", e, "start"]) => Some(Endpoint::ExecStart(id(e))),
        (Method::GET, ["exec", e, "json"]) => Some(Endpoint::ExecInspect(id(e))),
        (Method::POST, ["exec", e, "resize"]) => Some(Endpoint::ExecResize(id(e))),
        (Method::GET, ["networks"]) => Some(Endpoint::NetworkList),
        (Method::POST, ["networks", "create"]) => Some(Endpoint::NetworkCreate),
        (Method::GET, ["networks", n]) => Some(Endpoint::NetworkInspect(id(n))),
        (Method::DELETE, ["networks", n]) => Some(Endpoint::NetworkDelete(id(n))),
        (Method::POST, ["networks", n, "connect"]) => Some(Endpoint::NetworkConnect(id(n))),
        (Method::POST, ["networks", n, "disconnect"]) => Some(Endpoint::NetworkDisconnect(id(n))),
        (Method::GET, ["images", "json"]) => Some(Endpoint::ImageList),
        (Method::POST, ["images", "create"]) => Some(Endpoint::ImageCreate),
        (Method::GET, ["events"]) => Some(Endpoint::Events),
        // Image names hold slashes (`library/busybox`, `registry:5000/a/b`): everything
        // between `images/` and the last `/json`.
        (Method::GET, ["images", name @ .., "json"]) if !name.is_empty() => Some(Endpoint::ImageInspect(name.join("/"))),
        _ => None,
    };
    endpoint.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{method} {rest} is not supported by shoal's Docker API (yet)"),
        )
    })
}

/// Percent-decodes one path segment (ids and names are plain; `%2F` is refused: a
/// segment never holds a slash).
fn decode_segment(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("bad percent-encoding in the request path segment {s:?}"));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let text = std::str::from_utf8(hex).map_err(|_| bad())?;
                let byte = u8::from_str_radix(text, 16).map_err(|_| bad())?;
                out.push(byte);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| bad())?;
    if text.contains('/') || text.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_and_unversioned_paths_reach_the_same_endpoint() {
        for p in ["/_ping", "/v1.41/_ping", "/v1.24/_ping", "/v1.30/_ping/"] {
            assert_eq!(route(&Method::GET, p), Ok(Endpoint::Ping), "{p}");
        }
        assert_eq!(route(&Method::HEAD, "/_ping"), Ok(Endpoint::Ping));
        assert_eq!(route(&Method::GET, "/v1.41/containers/abc/json"), Ok(Endpoint::ContainerInspect("abc".into())));
        assert_eq!(route(&Method::DELETE, "/containers/hello"), Ok(Endpoint::ContainerDelete("hello".into())));
        assert_eq!(route(&Method::POST, "/v1.41/containers/create"), Ok(Endpoint::ContainerCreate));
        assert_eq!(route(&Method::GET, "/containers/a%2Db/json"), Ok(Endpoint::ContainerInspect("a-b".into())));
        assert_eq!(route(&Method::POST, "/v1.41/containers/hello/attach"), Ok(Endpoint::ContainerAttach("hello".into())));
        assert_eq!(route(&Method::POST, "/v1.41/containers/hello/exec"), Ok(Endpoint::ExecCreate("hello".into())));
        assert_eq!(route(&Method::POST, "/v1.41/exec/ab12/start"), Ok(Endpoint::ExecStart("ab12".into())));
        assert_eq!(route(&Method::GET, "/exec/ab12/json"), Ok(Endpoint::ExecInspect("ab12".into())));
        assert_eq!(route(&Method::POST, "/exec/ab12/resize"), Ok(Endpoint::ExecResize("ab12".into())));
    }

    #[test]
    fn networks_images_and_events() {
        assert_eq!(route(&Method::GET, "/v1.41/networks"), Ok(Endpoint::NetworkList));
        assert_eq!(route(&Method::POST, "/networks/create"), Ok(Endpoint::NetworkCreate));
        assert_eq!(route(&Method::GET, "/networks/p_default"), Ok(Endpoint::NetworkInspect("p_default".into())));
        assert_eq!(route(&Method::DELETE, "/networks/p_default"), Ok(Endpoint::NetworkDelete("p_default".into())));
        assert_eq!(route(&Method::POST, "/networks/n/connect"), Ok(Endpoint::NetworkConnect("n".into())));
        assert_eq!(route(&Method::POST, "/networks/n/disconnect"), Ok(Endpoint::NetworkDisconnect("n".into())));
        assert_eq!(route(&Method::GET, "/images/json"), Ok(Endpoint::ImageList));
        assert_eq!(route(&Method::GET, "/images/busybox:1/json"), Ok(Endpoint::ImageInspect("busybox:1".into())));
        assert_eq!(route(&Method::GET, "/images/reg:5000/a/b:1/json"), Ok(Endpoint::ImageInspect("reg:5000/a/b:1".into())));
        assert_eq!(route(&Method::POST, "/images/create"), Ok(Endpoint::ImageCreate));
        assert_eq!(route(&Method::GET, "/events"), Ok(Endpoint::Events));
        assert!(Endpoint::Events.is_stream() && Endpoint::ImageCreate.is_stream());
    }

    #[test]
    fn versions_outside_the_range_are_refused_with_dockers_words() {
        let e = route(&Method::GET, "/v1.50/version").expect_err("too new");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.message, "client version 1.50 is too new. Maximum supported API version is 1.41");
        let e = route(&Method::GET, "/v1.12/version").expect_err("too old");
        assert!(e.message.contains("too old") && e.message.contains("1.24"), "{}", e.message);
        assert_eq!(route(&Method::GET, "/v2.0/info").expect_err("2.0").status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn unsupported_endpoints_are_501_and_named() {
        let e = route(&Method::POST, "/v1.41/containers/abc/export").expect_err("501");
        assert_eq!(e.status, StatusCode::NOT_IMPLEMENTED);
        assert!(e.message.contains("POST /containers/abc/export"), "{}", e.message);
        let e = route(&Method::POST, "/networks/prune").expect_err("501");
        assert!(e.message.contains("POST /networks/prune"), "{}", e.message);
        // A wrong method on a known path is unsupported too.
        assert_eq!(route(&Method::POST, "/info").expect_err("501").status, StatusCode::NOT_IMPLEMENTED);
        // Not a version: an ordinary (unknown) path.
        assert_eq!(route(&Method::GET, "/vx/info").expect_err("501").status, StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert_eq!(route(&Method::GET, &format!("/{}", "a".repeat(MAX_PATH_LEN))).expect_err("long").status, StatusCode::BAD_REQUEST);
        for p in ["/containers/a%2Fb/json", "/containers/%zz/json", "/containers/%0a/json", "/containers/%ff/json", "/containers/%4"] {
            assert_eq!(route(&Method::GET, p).expect_err(p).status, StatusCode::BAD_REQUEST, "{p}");
        }
    }
}
