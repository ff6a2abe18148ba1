//! The distillers' transforms (TranSend's "distillation"): images scaled down and re-encoded as
//! low-quality JPEGs, HTML pages marked up, each per a user's [`Profile`]. Pure: bytes in, bytes
//! out, no I/O, no clock, no global state, so workers can run them on any thread and tests can
//! check them exactly.
//!
//! Input is untrusted (it comes from the Internet, here the origin). A transform must never
//! panic on it and never allocate more than the [`Limits`] allow: an image's dimensions are read
//! from its header and refused before any pixel buffer exists (decompression bombs), and a
//! corrupt or truncated image is an error, never a crash. A distilled image is never bigger than
//! its original: [`distill`] passes such an object through instead.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder as _, ImageFormat};
use serde::{Deserialize, Serialize};

use super::corpus::ContentType;

/// Objects under this many bytes are not distilled (TranSend): too small to gain from it.
pub const PASS_THROUGH_BYTES_MAX: usize = 1024;
/// The range of [`Profile::scale`]: below 5 % of each dimension an image is a smudge.
pub const SCALE_MIN: f32 = 0.05;
pub const SCALE_MAX: f32 = 1.0;
/// Most memory the HTML rewriter may buffer (a single tag split across writes is buffered).
pub const HTML_REWRITER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// The `id` of the toolbar [`munge_html`] adds; a page that has it already gets no second one.
pub const TOOLBAR_ID: &str = "clusterbench-toolbar";
/// The attribute [`munge_html`] sets on every `<img>`.
pub const DISTILLED_ATTRIBUTE: &str = "data-cb-distilled";
/// Bytes a decoder may allocate per pixel of the image: the RGBA output (4) and as much again
/// for its working buffers. Dimensions are checked against `pixels_max` before decoding; this is
/// the second line of defence, inside the decoder.
const DECODE_BYTES_PER_PIXEL_MAX: u64 = 8;

/// What a user asked the distillers for. Unknown keys are refused so a typo is not ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// JPEG quality of distilled images, 1..=100.
    pub quality: u8,
    /// Share of each dimension a distilled image keeps, [`SCALE_MIN`]..=[`SCALE_MAX`].
    pub scale: f32,
    /// Distill JPEGs.
    pub jpeg: bool,
    /// Distill GIFs (into JPEGs).
    pub gif: bool,
    /// Mark up HTML pages.
    pub html: bool,
    /// Add the toolbar (a link to the original) at the top of pages.
    pub toolbar: bool,
}

impl Default for Profile {
    fn default() -> Profile {
        Profile {
            quality: 25,
            scale: 0.5,
            jpeg: true,
            gif: true,
            html: true,
            toolbar: true,
        }
    }
}

impl Profile {
    /// Whether the values are in range; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.quality) {
            return Err(format!("quality must be 1 to 100, not {}", self.quality));
        }
        if !(SCALE_MIN..=SCALE_MAX).contains(&self.scale) {
            return Err(format!(
                "scale must be {SCALE_MIN} to {SCALE_MAX} (of each dimension), not {}",
                self.scale
            ));
        }
        Ok(())
    }

    /// The mark [`munge_html`] puts on images: `q{quality}-s{scale}`, e.g. `q25-s0.5`.
    pub fn mark(&self) -> String {
        format!("q{}-s{}", self.quality, self.scale)
    }
}

/// How much work a transform may take on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest input accepted.
    pub input_bytes_max: usize,
    /// Largest image (width x height) decoded.
    pub pixels_max: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            input_bytes_max: 16 * 1024 * 1024,
            pixels_max: 40_000_000,
        }
    }
}

/// What a distiller hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distilled {
    /// New bytes, of this type (distilled images are always JPEGs).
    Transformed {
        bytes: Vec<u8>,
        content_type: ContentType,
    },
    /// Send the original: its transform is off, it is too small to gain, it is of a type not
    /// transformed, or distilling it would not have made it smaller.
    PassThrough,
}

/// Why an object could not be transformed. The caller may still send the original.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransformError {
    #[error("the object is {bytes} bytes, over the limit of {max}")]
    TooBig { bytes: usize, max: usize },
    #[error("the image is {width}x{height} pixels, over the limit of {max} pixels")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("decoding would take more memory than allowed: {0}")]
    DecodeLimit(String),
    #[error("encoding the distilled image failed: {0}")]
    Encode(String),
    #[error("rewriting the HTML failed: {0}")]
    Html(String),
    #[error("invalid profile: {0}")]
    Profile(String),
}

/// Distills one object per `profile`: JPEGs and GIFs become smaller JPEGs, HTML is marked up,
/// anything else passes through (see [`Distilled::PassThrough`] for when).
pub fn distill(
    content_type: ContentType,
    input: &[u8],
    profile: &Profile,
    limits: &Limits,
) -> Result<Distilled, TransformError> {
    profile.validate().map_err(TransformError::Profile)?;
    let on = match content_type {
        ContentType::Html => profile.html,
        ContentType::Gif => profile.gif,
        ContentType::Jpeg => profile.jpeg,
        ContentType::Other => false,
    };
    if !on || input.len() < PASS_THROUGH_BYTES_MAX {
        return Ok(Distilled::PassThrough);
    }
    check_size(input, limits)?;
    match content_type {
        // Marking up always adds bytes: the never-bigger rule is about distillation.
        ContentType::Html => Ok(Distilled::Transformed {
            bytes: munge_html(input, profile)?,
            content_type: ContentType::Html,
        }),
        ContentType::Gif | ContentType::Jpeg => {
            let bytes = distill_image(input, profile, limits)?;
            Ok(if bytes.len() < input.len() {
                Distilled::Transformed {
                    bytes,
                    content_type: ContentType::Jpeg,
                }
            } else {
                Distilled::PassThrough
            })
        }
        ContentType::Other => Ok(Distilled::PassThrough),
    }
}

/// A JPEG scaled by `profile.scale` in each dimension and re-encoded at `profile.quality`.
/// (Whatever the label says, the bytes decide: a GIF given here is distilled as a GIF.)
pub fn distill_jpeg(
    input: &[u8],
    profile: &Profile,
    limits: &Limits,
) -> Result<Vec<u8>, TransformError> {
    distill_image(input, profile, limits)
}

/// A GIF's first frame, flattened onto white, scaled and encoded as a JPEG as
/// [`distill_jpeg`] does.
pub fn distill_gif(
    input: &[u8],
    profile: &Profile,
    limits: &Limits,
) -> Result<Vec<u8>, TransformError> {
    distill_image(input, profile, limits)
}

/// The dimensions a distilled image of an `original` (width, height) has: each scaled by
/// `profile.scale`, rounded to the nearest pixel, at least 1.
pub fn expected_dimensions(original: (u32, u32), profile: &Profile) -> (u32, u32) {
    let scale = if profile.scale.is_finite() {
        f64::from(profile.scale.clamp(SCALE_MIN, SCALE_MAX))
    } else {
        1.0
    };
    let dimension = |d: u32| ((f64::from(d) * scale).round() as u32).clamp(1, d.max(1));
    (dimension(original.0), dimension(original.1))
}

/// Marks up a page: every `<img>` gets `data-cb-distilled="q{quality}-s{scale}"` and, with
/// `profile.toolbar`, a toolbar (a link to the original) goes right after the first `<body>` tag
/// unless the page has one already. Streaming (lol_html): bytes not touched come out as they
/// came in, and running it again on its output changes nothing.
pub fn munge_html(input: &[u8], profile: &Profile) -> Result<Vec<u8>, TransformError> {
    use lol_html::html_content::ContentType as Inserted;
    use lol_html::{element, HtmlRewriter, MemorySettings, Settings};

    let mark = profile.mark();
    let toolbar = format!(
        "<div id=\"{TOOLBAR_ID}\">distilled by clusterbench (quality {}, scale {}) <a href=\"?cb=original\">original</a></div>",
        profile.quality, profile.scale
    );
    // The rewriter streams, so it cannot know at <body> whether a toolbar follows; one already
    // there (a page distilled twice) is found by its id beforehand.
    let mut toolbar_wanted = profile.toolbar && !contains(input, TOOLBAR_ID.as_bytes());
    let mut out = Vec::with_capacity(input.len() + toolbar.len() + 64);
    let settings = Settings::new()
        .append_element_content_handler(element!("img", |el| {
            el.set_attribute(DISTILLED_ATTRIBUTE, &mark)?;
            Ok(())
        }))
        .append_element_content_handler(element!("body", |el| {
            if toolbar_wanted {
                el.prepend(&toolbar, Inserted::Html);
                toolbar_wanted = false;
            }
            Ok(())
        }))
        .with_memory_settings(
            MemorySettings::new().with_max_allowed_memory_usage(HTML_REWRITER_BYTES_MAX),
        )
        // Strict mode refuses markup whose parse is ambiguous without a DOM (a sanitizer's
        // concern); adding an attribute to an <img> is harmless either way, and real pages are
        // messy.
        .with_strict(false);
    let mut rewriter = HtmlRewriter::new(settings, |chunk: &[u8]| out.extend_from_slice(chunk));
    rewriter
        .write(input)
        .map_err(|e| TransformError::Html(e.to_string()))?;
    rewriter
        .end()
        .map_err(|e| TransformError::Html(e.to_string()))?;
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn check_size(input: &[u8], limits: &Limits) -> Result<(), TransformError> {
    if input.len() > limits.input_bytes_max {
        return Err(TransformError::TooBig {
            bytes: input.len(),
            max: limits.input_bytes_max,
        });
    }
    Ok(())
}

/// Decode (within limits), flatten, scale, encode as JPEG.
fn distill_image(
    input: &[u8],
    profile: &Profile,
    limits: &Limits,
) -> Result<Vec<u8>, TransformError> {
    profile.validate().map_err(TransformError::Profile)?;
    check_size(input, limits)?;
    let picture = decode(input, limits)?;
    let (width, height) = expected_dimensions((picture.width(), picture.height()), profile);
    let picture = match picture {
        // Grey stays grey: a one-channel JPEG is a third of the size.
        DynamicImage::ImageLuma8(grey) => DynamicImage::ImageLuma8(grey),
        p if p.color().has_alpha() => DynamicImage::ImageRgb8(onto_white(&p.to_rgba8())),
        p => DynamicImage::ImageRgb8(p.to_rgb8()),
    };
    let picture = if (width, height) == (picture.width(), picture.height()) {
        picture
    } else {
        // Triangle (bilinear, widened by the scale factor, so it averages every source pixel
        // when shrinking): no aliasing, and far cheaper than Lanczos.
        picture.resize_exact(width, height, image::imageops::FilterType::Triangle)
    };
    let mut out = Vec::with_capacity(input.len() / 2);
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, profile.quality);
    picture
        .write_with_encoder(encoder)
        .map_err(|e| TransformError::Encode(e.to_string()))?;
    Ok(out)
}

/// The image in `input` (a JPEG or a GIF's first frame), its dimensions checked against the
/// limits before a pixel is decoded.
fn decode(input: &[u8], limits: &Limits) -> Result<DynamicImage, TransformError> {
    let format = match image::guess_format(input) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Gif)) => f,
        Ok(other) => {
            return Err(TransformError::Unsupported(format!(
                "{other:?} (only JPEG and GIF are distilled)"
            )))
        }
        Err(_) => return Err(TransformError::Corrupt("neither a JPEG nor a GIF".into())),
    };
    if format == ImageFormat::Jpeg {
        jpeg_is_complete(input)?;
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(input), format);
    let mut decode_limits = image::Limits::default();
    decode_limits.max_alloc = Some(limits.pixels_max.saturating_mul(DECODE_BYTES_PER_PIXEL_MAX));
    reader.limits(decode_limits);
    // Reads the header only.
    let decoder = reader.into_decoder().map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(TransformError::Corrupt(format!(
            "the header says {width}x{height} pixels"
        )));
    }
    if u64::from(width) * u64::from(height) > limits.pixels_max {
        return Err(TransformError::TooManyPixels {
            width,
            height,
            max: limits.pixels_max,
        });
    }
    DynamicImage::from_decoder(decoder).map_err(image_error)
}

/// A JPEG must end its scans with EOI: the decoder paints what a truncated file lacks grey
/// rather than failing, and a distilled half-grey picture is worse than the original. (Inside
/// entropy-coded data every 0xFF is followed by 0x00 or a restart marker, so an FF D9 after the
/// first scan header is the end; one before it may belong to an embedded thumbnail.)
fn jpeg_is_complete(input: &[u8]) -> Result<(), TransformError> {
    let scan = input.windows(2).position(|w| w == [0xFF, 0xDA]);
    let end = input.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    match (scan, end) {
        (Some(scan), Some(end)) if end > scan => Ok(()),
        (None, _) => Err(TransformError::Corrupt("a JPEG without image data".into())),
        _ => Err(TransformError::Corrupt(
            "the JPEG is truncated (no end-of-image marker)".into(),
        )),
    }
}

fn image_error(e: image::ImageError) -> TransformError {
    match e {
        image::ImageError::Limits(e) => TransformError::DecodeLimit(e.to_string()),
        image::ImageError::Unsupported(e) => TransformError::Unsupported(e.to_string()),
        e => TransformError::Corrupt(e.to_string()),
    }
}

/// An RGBA picture composited onto white (JPEG has no transparency; web pages are mostly white).
fn onto_white(rgba: &image::RgbaImage) -> image::RgbImage {
    image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = u32::from(a);
        let blend = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([blend(r), blend(g), blend(b)])
    })
}

#[cfg(test)]
mod tests;
