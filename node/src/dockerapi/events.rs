//! `GET /events`: compose's `logs -f` (and `docker events`) keep it open while they run.
//! shoal has no event feed yet: the answer is a chunked stream that stays open, sends
//! nothing, and ends when the client goes away (or at `until`, if given).

use super::http::{ApiError, Body};
use super::query::Query;
use hyper::Response;
use std::time::Duration;

/// Longest an events stream stays open without `until` (clients reconnect).
pub const MAX_EVENTS_STREAM: Duration = Duration::from_secs(24 * 3600);

/// How long the stream stays open: until `until` (Unix seconds) or [`MAX_EVENTS_STREAM`].
pub fn open_for(until: Option<i64>, now_s: i64) -> Duration {
    match until {
        Some(u) => Duration::from_secs(u.saturating_sub(now_s).clamp(0, MAX_EVENTS_STREAM.as_secs() as i64) as u64),
        None => MAX_EVENTS_STREAM,
    }
}

pub fn events(query: &Query) -> Result<Response<Body>, ApiError> {
    query.filters()?; // malformed filters are still refused
    let until = query.get("until").map(|u| u.split('.').next().unwrap_or("").parse::<i64>()).transpose().map_err(|_| {
        ApiError::bad_request("until must be a Unix time in seconds")
    })?;
    let now_s = (crate::control::now_ms() / 1000) as i64;
    let wait = open_for(until, now_s);
    let (tx, body) = Body::stream();
    tokio::spawn(async move {
        tokio::select! {
            () = tx.closed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_bounds_the_stream() {
        assert_eq!(open_for(None, 100), MAX_EVENTS_STREAM);
        assert_eq!(open_for(Some(130), 100), Duration::from_secs(30));
        assert_eq!(open_for(Some(50), 100), Duration::ZERO);
        assert_eq!(open_for(Some(i64::MAX), 0), MAX_EVENTS_STREAM);
    }
}
