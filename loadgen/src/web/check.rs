//! What a response must be, and what the responses of a run were.
//!
//! Against the bundled web cluster a response says what the service did in `X-Cb`
//! (`distilled`, `pass-through`, `degraded`, `undistillable`, `original`) and `X-Cache`
//! (`HIT`/`MISS`). The checks:
//!
//! - the status is 200;
//! - a response that is the original (passed through, degraded, or from a plain proxy or web
//!   server) has exactly the original's bytes, when the origin's manifest lists the object (its
//!   length and CRC-32);
//! - a distilled image is a JPEG that decodes, smaller than the original;
//! - a distilled page carries the munger's marks (its toolbar, or images marked distilled).
//!
//! A response that breaks one is an error of its request (`check: ...`); what the service did is
//! counted in [`Outcomes`] either way.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::client::{HttpError, Response};
use crate::OpKind;

/// Most manifest entries kept (the bundled origin lists at most this many).
pub const MANIFEST_ENTRIES_MAX: usize = 1_000_000;
/// The id of the toolbar the web cluster's munger adds.
pub const TOOLBAR_MARK: &[u8] = b"clusterbench-toolbar";
/// The attribute the munger puts on every image it rewrote.
pub const DISTILLED_MARK: &[u8] = b"data-cb-distilled";

/// The origin's objects: path → (bytes, CRC-32).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    objects: HashMap<String, (u64, u32)>,
}

#[derive(Deserialize)]
struct ManifestJson {
    entries: Vec<ManifestEntryJson>,
}

#[derive(Deserialize)]
struct ManifestEntryJson {
    path: String,
    bytes: u64,
    crc32: u32,
}

impl Manifest {
    /// From the bundled origin's `/manifest.json`.
    pub fn from_json(body: &[u8]) -> Result<Manifest, String> {
        let m: ManifestJson =
            serde_json::from_slice(body).map_err(|e| format!("the origin's manifest: {e}"))?;
        if m.entries.len() > MANIFEST_ENTRIES_MAX {
            return Err(format!(
                "the origin's manifest: more than {MANIFEST_ENTRIES_MAX} entries"
            ));
        }
        Ok(Manifest {
            objects: m
                .entries
                .into_iter()
                .map(|e| (e.path, (e.bytes, e.crc32)))
                .collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The original of the object `url` names (its path; query and host ignored).
    pub fn original(&self, url: &str) -> Option<(u64, u32)> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let path = rest.find('/').map_or("/", |i| &rest[i..]);
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.objects.get(path).copied()
    }
}

/// What the service did with the responses of a run (counted whatever the checks said).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    /// Responses received with status 200.
    pub ok: u64,
    /// `X-Cb: distilled`.
    pub distilled: u64,
    /// `X-Cb: pass-through` (under the distillation threshold, or not a type distilled).
    pub pass_through: u64,
    /// `X-Cb: degraded`: no worker could do it, the original was served.
    pub degraded: u64,
    /// `X-Cb: undistillable` or `original` (the profile asked for none, or distilling would not
    /// make it smaller).
    pub original: u64,
    /// No `X-Cb`: a plain proxy or web server.
    pub untagged: u64,
    /// `X-Cache: HIT`.
    pub cache_hits: u64,
    /// Bytes compared with the origin's manifest and equal.
    pub verified: u64,
    /// Responses whose original the manifest does not list (not compared).
    pub unverified: u64,
    /// Bytes of response bodies.
    pub body_bytes: u64,
}

impl Outcomes {
    pub fn merge(&mut self, o: &Outcomes) {
        self.ok += o.ok;
        self.distilled += o.distilled;
        self.pass_through += o.pass_through;
        self.degraded += o.degraded;
        self.original += o.original;
        self.untagged += o.untagged;
        self.cache_hits += o.cache_hits;
        self.verified += o.verified;
        self.unverified += o.unverified;
        self.body_bytes += o.body_bytes;
    }

    /// Hits over responses, if any responses.
    pub fn hit_rate(&self) -> Option<f64> {
        (self.ok > 0).then(|| self.cache_hits as f64 / self.ok as f64)
    }
}

/// Checks one response to a `GET url` (of `kind`) and counts it; `full` = every check, else
/// the status only.
pub fn check(
    url: &str,
    kind: OpKind,
    response: &Response,
    manifest: Option<&Manifest>,
    full: bool,
    outcomes: &mut Outcomes,
) -> Result<(), HttpError> {
    if response.status != 200 {
        return Err(HttpError::Status(response.status));
    }
    outcomes.ok += 1;
    outcomes.body_bytes += response.body.len() as u64;
    let header = |name: &str| response.header(name).map(str::to_ascii_lowercase);
    if header("x-cache").as_deref() == Some("hit") {
        outcomes.cache_hits += 1;
    }
    let what = header("x-cb");
    match what.as_deref() {
        Some("distilled") => outcomes.distilled += 1,
        Some("pass-through") => outcomes.pass_through += 1,
        Some("degraded") => outcomes.degraded += 1,
        Some(_) => outcomes.original += 1,
        None => outcomes.untagged += 1,
    }
    if !full {
        return Ok(());
    }
    let original = manifest.and_then(|m| m.original(url));
    if what.as_deref() == Some("distilled") {
        return match kind {
            OpKind::Gif | OpKind::Jpeg => {
                if let Some((bytes, _)) = original {
                    if response.body.len() as u64 >= bytes {
                        return Err(HttpError::Check("not smaller"));
                    }
                }
                image::load_from_memory_with_format(&response.body, image::ImageFormat::Jpeg)
                    .map_err(|_| HttpError::Check("not a decodable jpeg"))?;
                Ok(())
            }
            OpKind::Html => {
                if contains(&response.body, TOOLBAR_MARK)
                    || contains(&response.body, DISTILLED_MARK)
                {
                    Ok(())
                } else {
                    Err(HttpError::Check("page without the munger's marks"))
                }
            }
            _ => Ok(()),
        };
    }
    // The original, passed through or served by a plain proxy: byte for byte.
    match original {
        Some((bytes, crc)) => {
            if response.body.len() as u64 != bytes || crc32fast::hash(&response.body) != crc {
                return Err(HttpError::Check("not the original's bytes"));
            }
            outcomes.verified += 1;
        }
        None => outcomes.unverified += 1,
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Response {
        Response::new(status, headers, body)
    }

    fn manifest(path: &str, body: &[u8]) -> Manifest {
        let json = serde_json::json!({"entries": [
            {"path": path, "bytes": body.len(), "crc32": crc32fast::hash(body), "content_type": "other"}
        ]});
        Manifest::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn the_original_must_come_back_byte_for_byte() {
        let m = manifest("/obj/1.bin", b"hello world");
        let mut o = Outcomes::default();
        let good = response(200, &[("x-cb", "pass-through")], b"hello world");
        check(
            "http://o:1/obj/1.bin",
            OpKind::Other,
            &good,
            Some(&m),
            true,
            &mut o,
        )
        .unwrap();
        let bad = response(200, &[], b"hello worle");
        let e = check(
            "http://o:1/obj/1.bin",
            OpKind::Other,
            &bad,
            Some(&m),
            true,
            &mut o,
        );
        assert_eq!(e.unwrap_err().kind(), "check: not the original's bytes");
        // Not listed: counted as unverified, not failed.
        check(
            "http://o:1/obj/2.bin",
            OpKind::Other,
            &bad,
            Some(&m),
            true,
            &mut o,
        )
        .unwrap();
        assert_eq!((o.ok, o.verified, o.unverified, o.untagged), (3, 1, 1, 2));
    }

    #[test]
    fn distilled_images_must_decode_and_shrink_and_pages_carry_marks() {
        let mut o = Outcomes::default();
        let m = manifest("/obj/1.jpg", &[0u8; 100]);
        let junk = response(200, &[("x-cb", "distilled")], &[0xff, 0xd8, 1, 2, 3]);
        let e = check(
            "http://o/obj/1.jpg",
            OpKind::Jpeg,
            &junk,
            Some(&m),
            true,
            &mut o,
        );
        assert_eq!(e.unwrap_err().kind(), "check: not a decodable jpeg");
        let big = response(200, &[("x-cb", "distilled")], &[0u8; 200]);
        let e = check(
            "http://o/obj/1.jpg",
            OpKind::Jpeg,
            &big,
            Some(&m),
            true,
            &mut o,
        );
        assert_eq!(e.unwrap_err().kind(), "check: not smaller");
        let page = response(
            200,
            &[("x-cb", "distilled")],
            b"<html><body>plain</body></html>",
        );
        assert!(check("http://o/a.html", OpKind::Html, &page, None, true, &mut o).is_err());
        let page = response(
            200,
            &[("x-cb", "distilled"), ("x-cache", "HIT")],
            b"<img src=a data-cb-distilled=\"q25-s0.5\">",
        );
        check("http://o/a.html", OpKind::Html, &page, None, true, &mut o).unwrap();
        assert_eq!(o.cache_hits, 1);
        // Status-only checks let anything with a 200 through.
        check(
            "http://o/obj/1.jpg",
            OpKind::Jpeg,
            &junk,
            Some(&m),
            false,
            &mut o,
        )
        .unwrap();
        let e = check(
            "http://o/x",
            OpKind::Other,
            &response(502, &[], b""),
            None,
            true,
            &mut o,
        );
        assert_eq!(e.unwrap_err().kind(), "http 502");
    }
}
