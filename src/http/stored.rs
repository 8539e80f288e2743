//! Serves a finished video from the object store (`AURA_STORAGE_URL` other than the data
//! folder) exactly as `tower_http`'s `ServeFile` serves it from the data folder: `200` with the
//! whole body, one `Range` as `206` with `Content-Range`, `416` with `bytes */size` for a range
//! that does not parse or lies outside the video (or asks for several parts), `Accept-Ranges`
//! always, and `HEAD` without touching the body.
//!
//! A store failure is a plain `500` problem; its detail (keys, endpoint, the store's own words)
//! goes to the log only.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::AppError;
use crate::objects::{ObjectError, Objects};

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Wanted {
    Whole,
    /// Bytes `start..end` (end exclusive), within the object.
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

/// Reads one `bytes=` range (`a-b`, `a-`, `-n`) against `size`.
pub fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(range) = range else { return Wanted::Whole };
    let Some(spec) = range.trim().strip_prefix("bytes=") else { return Wanted::Unsatisfiable };
    let Some((first, last)) = spec.trim().split_once('-') else { return Wanted::Unsatisfiable };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) { None } else { s.parse().ok() }
    };
    let part = match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match number(last) {
            Some(n) if n > 0 && size > 0 => (size - n.min(size))..size,
            _ => return Wanted::Unsatisfiable,
        },
        // `a-`: from a to the end.
        (false, true) => match number(first) {
            Some(a) if a < size => a..size,
            _ => return Wanted::Unsatisfiable,
        },
        // `a-b`: both inclusive; b past the end means the end.
        (false, false) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a <= b && a < size => a..b.min(size - 1) + 1,
            _ => return Wanted::Unsatisfiable,
        },
        (true, true) => return Wanted::Unsatisfiable,
    };
    Wanted::Part(part)
}

/// Logs a store failure in full and answers a plain problem.
fn failed(e: ObjectError) -> AppError {
    match e {
        ObjectError::NotFound => AppError::NotFound("the job's output file is gone".into()),
        e => AppError::Internal(anyhow::Error::new(e).context("serving a video from the object store")),
    }
}

/// Answers `method` (GET or HEAD) with `headers`' `Range` for the object at `key`.
pub async fn serve(
    objects: &Objects,
    key: &object_store::path::Path,
    mime: &'static str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, AppError> {
    let size = objects.size(key).await.map_err(failed)?;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, part) = match wanted(range, size) {
        Wanted::Whole => (StatusCode::OK, 0..size),
        Wanted::Part(part) => (StatusCode::PARTIAL_CONTENT, part),
        Wanted::Unsatisfiable => {
            let mut res = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            res.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            return Ok(res);
        }
    };
    let body = if method == Method::HEAD || part.is_empty() {
        Body::empty()
    } else {
        let object = objects.get(key, (status == StatusCode::PARTIAL_CONTENT).then(|| part.clone())).await;
        let object = object.map_err(failed)?;
        if object.range != part {
            return Err(failed(ObjectError::SizeMismatch { stored: object.range.end, local: part.end }));
        }
        Body::from_stream(object.body)
    };
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(part.end - part.start));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{size}", part.start, part.end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_serve_file_reads_them() {
        assert_eq!(wanted(None, 10), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-3"), 10), Wanted::Part(0..4));
        assert_eq!(wanted(Some("bytes=4-"), 10), Wanted::Part(4..10));
        assert_eq!(wanted(Some("bytes=-3"), 10), Wanted::Part(7..10));
        assert_eq!(wanted(Some("bytes=-30"), 10), Wanted::Part(0..10));
        assert_eq!(wanted(Some("bytes=5-99"), 10), Wanted::Part(5..10));
        for bad in [
            "bytes=10-",
            "bytes=20-30",
            "bytes=3-1",
            "bytes=-0",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=x-1",
            "bytes=-",
        ] {
            assert_eq!(wanted(Some(bad), 10), Wanted::Unsatisfiable, "{bad}");
        }
        assert_eq!(wanted(Some("bytes=0-1"), 0), Wanted::Unsatisfiable);
    }
}
