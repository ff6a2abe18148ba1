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

/// The origin's objects by path.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    objects: HashMap<String, Original>,
}

/// One object as the origin serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    pub bytes: u64,
    pub crc32: u32,
    /// Images: width and height in pixels, when the manifest says.
    #[serde(default)]
    pub dimensions: Option<(u32, u32)>,
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
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
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
                .map(|e| {
                    let original = Original {
                        bytes: e.bytes,
                        crc32: e.crc32,
                        dimensions: e.width.zip(e.height),
                    };
                    (e.path, original)
                })
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
    pub fn original(&self, url: &str) -> Option<Original> {
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
    /// Distilled images whose width and height were checked against the profile the response
    /// names (`X-Cb-Profile`) and the original's size.
    #[serde(default)]
    pub sized: u64,
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
        self.sized += o.sized;
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
                if let Some(o) = original {
                    if response.body.len() as u64 >= o.bytes {
                        return Err(HttpError::Check("not smaller"));
                    }
                }
                let image =
                    image::load_from_memory_with_format(&response.body, image::ImageFormat::Jpeg)
                        .map_err(|_| HttpError::Check("not a decodable jpeg"))?;
                let scale = response.header("x-cb-profile").and_then(profile_scale);
                if let (Some(scale), Some((w, h))) = (scale, original.and_then(|o| o.dimensions)) {
                    if (image.width(), image.height()) != (scaled(w, scale), scaled(h, scale)) {
                        return Err(HttpError::Check("not the profile's size"));
                    }
                    outcomes.sized += 1;
                }
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
        Some(Original { bytes, crc32, .. }) => {
            if response.body.len() as u64 != bytes || crc32fast::hash(&response.body) != crc32 {
                return Err(HttpError::Check("not the original's bytes"));
            }
            outcomes.verified += 1;
        }
        None => outcomes.unverified += 1,
    }
    Ok(())
}

/// The scale of a profile mark (`q25-s0.5` → 0.5), as the distiller reads it.
fn profile_scale(mark: &str) -> Option<f64> {
    let scale: f32 = mark.split_once("-s")?.1.parse().ok()?;
    (scale.is_finite() && scale > 0.0 && scale <= 1.0).then(|| f64::from(scale))
}

/// One dimension of a distilled image: the original's times the scale, rounded to the nearest
/// pixel, at least 1 and at most the original's (as the web cluster's distillers make it).
fn scaled(d: u32, scale: f64) -> u32 {
    ((f64::from(d) * scale).round() as u32).clamp(1, d.max(1))
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
    fn distilled_images_must_be_the_profiles_size() {
        let jpeg = |w: u32, h: u32| {
            let mut out = Vec::new();
            image::RgbImage::from_pixel(w, h, image::Rgb([90, 120, 200]))
                .write_to(
                    &mut std::io::Cursor::new(&mut out),
                    image::ImageFormat::Jpeg,
                )
                .unwrap();
            out
        };
        let json = serde_json::json!({"entries": [
            {"path": "/obj/2.jpg", "bytes": 1_000_000, "crc32": 0, "width": 301, "height": 100}
        ]});
        let m = Manifest::from_json(json.to_string().as_bytes()).unwrap();
        let mut o = Outcomes::default();
        let headers = [("x-cb", "distilled"), ("x-cb-profile", "q25-s0.5")];
        // 301 x 0.5 rounds to 151 (150.5 away from zero), 100 x 0.5 is 50.
        let right = response(200, &headers, &jpeg(151, 50));
        check(
            "http://o/obj/2.jpg",
            OpKind::Jpeg,
            &right,
            Some(&m),
            true,
            &mut o,
        )
        .unwrap();
        assert_eq!(o.sized, 1);
        let wrong = response(200, &headers, &jpeg(150, 50));
        let e = check(
            "http://o/obj/2.jpg",
            OpKind::Jpeg,
            &wrong,
            Some(&m),
            true,
            &mut o,
        );
        assert_eq!(e.unwrap_err().kind(), "check: not the profile's size");
        // Without the profile's name, or the original's size, the size is not judged.
        let unnamed = response(200, &[("x-cb", "distilled")], &jpeg(150, 50));
        check(
            "http://o/obj/2.jpg",
            OpKind::Jpeg,
            &unnamed,
            Some(&m),
            true,
            &mut o,
        )
        .unwrap();
        assert_eq!(o.sized, 1);
        assert_eq!(profile_scale("q40-s0.25"), Some(0.25));
        assert_eq!(profile_scale("q40"), None);
        assert_eq!(scaled(3, 0.05), 1);
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
