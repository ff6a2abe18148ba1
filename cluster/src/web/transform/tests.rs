//! The transforms against the corpus's objects and against hostile input.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::{Rng, SeedableRng};

use super::*;
use crate::web::corpus::{decode_for_test, Corpus};

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let picture = decode_for_test(bytes);
    (picture.width(), picture.height())
}

/// Corpus images of `content_type` from 1 KB up to `bytes_max`, at most `count` of them.
fn images(content_type: ContentType, bytes_max: usize, count: usize) -> Vec<Vec<u8>> {
    let corpus = Corpus::new(1, 5000).unwrap();
    (0..5000)
        .filter_map(|i| {
            let info = corpus.info(i)?;
            (info.content_type == content_type
                && (PASS_THROUGH_BYTES_MAX..=bytes_max).contains(&info.bytes))
            .then(|| corpus.body(i).unwrap())
        })
        .take(count)
        .collect()
}

#[test]
fn distilled_images_are_smaller_jpegs_of_the_expected_dimensions() {
    let profile = Profile::default();
    let limits = Limits::default();
    for (content_type, distill_one) in [
        (
            ContentType::Jpeg,
            distill_jpeg as fn(&[u8], &Profile, &Limits) -> Result<Vec<u8>, TransformError>,
        ),
        (ContentType::Gif, distill_gif),
    ] {
        let originals = images(content_type, 64 * 1024, 60);
        assert!(originals.len() >= 50);
        for original in &originals {
            let distilled = distill_one(original, &profile, &limits).unwrap();
            assert_eq!(image::guess_format(&distilled).unwrap(), ImageFormat::Jpeg);
            assert_eq!(
                dimensions(&distilled),
                expected_dimensions(dimensions(original), &profile)
            );
            assert!(
                distilled.len() < original.len(),
                "{content_type:?}: {} bytes distilled from {}",
                distilled.len(),
                original.len()
            );
            match distill(content_type, original, &profile, &limits).unwrap() {
                Distilled::Transformed {
                    bytes,
                    content_type: ContentType::Jpeg,
                } => assert_eq!(bytes, distilled),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn quality_and_scale_change_the_result() {
    let original = &images(ContentType::Jpeg, 64 * 1024, 1)[0];
    let limits = Limits::default();
    let at = |quality, scale| {
        let profile = Profile {
            quality,
            scale,
            ..Profile::default()
        };
        distill_jpeg(original, &profile, &limits).unwrap()
    };
    assert!(at(10, 0.5).len() < at(50, 0.5).len());
    assert!(at(25, 0.25).len() < at(25, 0.5).len());
    let full = at(25, 1.0);
    assert_eq!(dimensions(&full), dimensions(original));
}

#[test]
fn transparent_gif_pixels_become_white() {
    let mut rgba = image::RgbaImage::from_pixel(40, 40, image::Rgba([0, 0, 0, 0]));
    for x in 0..20 {
        for y in 0..40 {
            rgba.put_pixel(x, y, image::Rgba([200, 0, 0, 255]));
        }
    }
    let mut gif = Vec::new();
    image::DynamicImage::ImageRgba8(rgba)
        .write_to(&mut Cursor::new(&mut gif), ImageFormat::Gif)
        .unwrap();
    let profile = Profile {
        quality: 90,
        scale: 1.0,
        ..Profile::default()
    };
    let jpeg = distill_gif(&gif, &profile, &Limits::default()).unwrap();
    let picture = decode_for_test(&jpeg).to_rgb8();
    let [r, g, b] = picture.get_pixel(35, 20).0;
    assert!(r > 230 && g > 230 && b > 230, "{:?}", (r, g, b));
    let [r, g, _] = picture.get_pixel(5, 20).0;
    assert!(r > 150 && g < 60, "{:?}", (r, g));
}

#[test]
fn what_passes_through() {
    let limits = Limits::default();
    let profile = Profile::default();
    let jpeg = &images(ContentType::Jpeg, 64 * 1024, 1)[0];
    let gif = &images(ContentType::Gif, 64 * 1024, 1)[0];
    let corpus = Corpus::new(1, 5000).unwrap();
    let small_gif = (0..5000)
        .find_map(|i| {
            let info = corpus.info(i)?;
            (info.content_type == ContentType::Gif && info.bytes < PASS_THROUGH_BYTES_MAX)
                .then(|| corpus.body(i).unwrap())
        })
        .unwrap();
    let pass = |t, input: &[u8], p: &Profile| {
        assert_eq!(
            distill(t, input, p, &limits).unwrap(),
            Distilled::PassThrough
        )
    };
    // Under 1 KB.
    pass(ContentType::Gif, &small_gif, &profile);
    // Transform off.
    pass(
        ContentType::Jpeg,
        jpeg,
        &Profile {
            jpeg: false,
            ..Profile::default()
        },
    );
    pass(
        ContentType::Gif,
        gif,
        &Profile {
            gif: false,
            ..Profile::default()
        },
    );
    pass(
        ContentType::Html,
        &[b'x'; 2000],
        &Profile {
            html: false,
            ..Profile::default()
        },
    );
    // Not a type we transform.
    pass(ContentType::Other, jpeg, &profile);
    // Distilling would make it bigger: full size at top quality.
    let bigger = Profile {
        quality: 100,
        scale: 1.0,
        ..Profile::default()
    };
    assert!(distill_jpeg(jpeg, &bigger, &limits).unwrap().len() >= jpeg.len());
    pass(ContentType::Jpeg, jpeg, &bigger);
}

#[test]
fn limits_are_enforced_before_decoding() {
    let jpeg = &images(ContentType::Jpeg, 64 * 1024, 1)[0];
    let profile = Profile::default();
    let small = Limits {
        input_bytes_max: 2000,
        pixels_max: 40_000_000,
    };
    assert!(jpeg.len() > 2000);
    assert_eq!(
        distill(ContentType::Jpeg, jpeg, &profile, &small),
        Err(TransformError::TooBig {
            bytes: jpeg.len(),
            max: 2000
        })
    );
    let few_pixels = Limits {
        input_bytes_max: 1 << 20,
        pixels_max: 100,
    };
    assert!(matches!(
        distill_jpeg(jpeg, &profile, &few_pixels),
        Err(TransformError::TooManyPixels { max: 100, .. })
    ));
}

/// A JPEG whose header claims 60000x60000 pixels: refused from the header alone.
#[test]
fn decompression_bombs_are_refused() {
    let profile = Profile::default();
    let limits = Limits::default();
    let mut jpeg = images(ContentType::Jpeg, 64 * 1024, 1)[0].clone();
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline SOF");
    // FF C0, length (2), precision (1), height (2), width (2).
    jpeg[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
    assert_eq!(
        distill_jpeg(&jpeg, &profile, &limits),
        Err(TransformError::TooManyPixels {
            width: 60_000,
            height: 60_000,
            max: limits.pixels_max
        })
    );
    // A GIF whose logical screen is 65535x65535.
    let mut gif = images(ContentType::Gif, 64 * 1024, 1)[0].clone();
    gif[6..8].copy_from_slice(&65_535u16.to_le_bytes());
    gif[8..10].copy_from_slice(&65_535u16.to_le_bytes());
    assert!(
        matches!(
            distill_gif(&gif, &profile, &limits),
            Err(TransformError::TooManyPixels { .. })
        ),
        "{:?}",
        distill_gif(&gif, &profile, &limits)
    );
}

#[test]
fn garbage_and_truncated_images_are_corrupt() {
    let profile = Profile::default();
    let limits = Limits::default();
    for input in [
        &b""[..],
        b"hello, world",
        b"\xFF\xD8\xFF",
        b"GIF89a",
        b"GIF89a\x10\x00\x10\x00",
        &[0u8; 5000],
    ] {
        let result = distill_jpeg(input, &profile, &limits);
        assert!(
            matches!(result, Err(TransformError::Corrupt(_))),
            "{result:?}"
        );
    }
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    assert!(matches!(
        distill_jpeg(png, &profile, &limits),
        Err(TransformError::Unsupported(_))
    ));
    // Corpus images are at least 72 % picture (the rest is a comment: at the start of a JPEG, at
    // the end of a GIF), so these cuts all fall inside the picture; a JPEG without its final EOI
    // marker is truncated too. (A GIF cut after its first frame is complete as far as its
    // distillation goes, and is distilled.)
    for content_type in [ContentType::Jpeg, ContentType::Gif] {
        for original in images(content_type, 64 * 1024, 5) {
            let len = original.len();
            let mut cuts = vec![len / 10, len / 2, len * 3 / 5];
            if content_type == ContentType::Jpeg {
                cuts.extend([len - 40, len - 1]);
            }
            for keep in cuts {
                let result = distill_jpeg(&original[..keep], &profile, &limits);
                assert!(
                    matches!(result, Err(TransformError::Corrupt(_))),
                    "{content_type:?} cut to {keep} of {}: {result:?}",
                    original.len()
                );
            }
        }
    }
}

/// Seeded damage to real images, a few hundred cases: the transforms may fail, never panic.
#[test]
fn damaged_images_never_panic() {
    damage(400, 20_250_101);
}

/// The same at length (release build, ~a minute).
#[test]
#[ignore]
fn damaged_images_never_panic_long() {
    damage(40_000, 1);
}

fn damage(cases: usize, seed: u64) {
    let profile = Profile::default();
    let limits = Limits::default();
    let mut originals = images(ContentType::Jpeg, 16 * 1024, 10);
    originals.extend(images(ContentType::Gif, 16 * 1024, 10));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut failed = 0;
    for case in 0..cases {
        let original = &originals[rng.random_range(0..originals.len())];
        let mut input = original.clone();
        match case % 4 {
            // Truncated.
            0 => input.truncate(rng.random_range(0..original.len())),
            // Bits flipped.
            1 => {
                for _ in 0..rng.random_range(1..20) {
                    let at = rng.random_range(0..input.len());
                    input[at] ^= 1 << rng.random_range(0..8);
                }
            }
            // A stretch overwritten with garbage (headers included).
            2 => {
                let start = rng.random_range(0..input.len().min(200));
                let end = (start + rng.random_range(1..64)).min(input.len());
                rng.fill(&mut input[start..end]);
            }
            // A stretch cut out of the middle.
            _ => {
                let start = rng.random_range(0..input.len());
                let end = (start + rng.random_range(1..500)).min(input.len());
                input.drain(start..end);
            }
        }
        let content_type = if image::guess_format(original).unwrap() == ImageFormat::Gif {
            ContentType::Gif
        } else {
            ContentType::Jpeg
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            distill(content_type, &input, &profile, &limits)
        }));
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => failed += 1,
            Err(_) => panic!("case {case}: the transform panicked on damaged {content_type:?}"),
        }
    }
    // Most damage is noticed (flipped bits inside entropy-coded data often is not).
    assert!(
        failed > cases / 4,
        "only {failed} of {cases} damaged images failed"
    );
}

const PAGE: &str = "<!DOCTYPE html>\n<html>\n<head><title>T &amp; U</title></head>\n<body class=\"x\">\n<h1>Hello</h1>\n<p>Some <b>bold</b> text &lt;not a tag&gt; and caf\u{e9}.<img src=\"/obj/1.gif\" alt=\"one\"></p>\n<IMG SRC='/obj/2.jpg'>\n<p>More<img src=/obj/3.gif></p>\n<!-- <img src=\"/obj/4.gif\"> in a comment -->\n<script>var s = \"<img src=x>\";</script>\n</body>\n</html>\n";

fn toolbar(profile: &Profile) -> String {
    format!(
        "<div id=\"clusterbench-toolbar\">distilled by clusterbench (quality {}, scale {}) <a href=\"?cb=original\">original</a></div>",
        profile.quality, profile.scale
    )
}

/// The text of a page: everything outside tags.
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[test]
fn pages_get_marks_and_a_toolbar_and_keep_everything_else() {
    let profile = Profile::default();
    let out = String::from_utf8(munge_html(PAGE.as_bytes(), &profile).unwrap()).unwrap();
    assert_eq!(
        out.matches("data-cb-distilled=\"q25-s0.5\"").count(),
        3,
        "{out}"
    );
    assert!(
        out.contains(&format!("<body class=\"x\">{}", toolbar(&profile))),
        "{out}"
    );
    // Comments and scripts are not elements: untouched.
    assert!(out.contains("<!-- <img src=\"/obj/4.gif\"> in a comment -->"));
    assert!(out.contains("<script>var s = \"<img src=x>\";</script>"));
    // The text is all there.
    let text = text_of(&out);
    let toolbar_text = text_of(&toolbar(&profile));
    assert_eq!(text.replacen(&toolbar_text, "", 1), text_of(PAGE));
    // And, marks and toolbar taken out again, so is every byte the rewriter did not touch.
    let mut back = out.replacen(&toolbar(&profile), "", 1);
    back = back.replace(" data-cb-distilled=\"q25-s0.5\"", "");
    let touched_tags = |s: &str| {
        s.replace("<img src=\"/obj/1.gif\" alt=\"one\">", "IMG1")
            .replace("<IMG SRC='/obj/2.jpg'>", "IMG2")
            .replace("<IMG SRC=\"/obj/2.jpg\">", "IMG2")
            .replace("<img src=/obj/3.gif>", "IMG3")
            .replace("<img src=\"/obj/3.gif\">", "IMG3")
    };
    assert_eq!(touched_tags(&back), touched_tags(PAGE), "{out}");
}

#[test]
fn munging_twice_changes_nothing() {
    let profile = Profile::default();
    let once = munge_html(PAGE.as_bytes(), &profile).unwrap();
    let twice = munge_html(&once, &profile).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&twice),
        String::from_utf8_lossy(&once)
    );
    assert_eq!(
        String::from_utf8(twice)
            .unwrap()
            .matches(TOOLBAR_ID)
            .count(),
        1
    );
    // Another profile re-marks the images, still with one toolbar.
    let other = Profile {
        quality: 60,
        scale: 0.25,
        ..Profile::default()
    };
    let again = String::from_utf8(munge_html(&once, &other).unwrap()).unwrap();
    assert_eq!(again.matches("data-cb-distilled=\"q60-s0.25\"").count(), 3);
    assert_eq!(again.matches("data-cb-distilled").count(), 3);
    assert_eq!(again.matches(TOOLBAR_ID).count(), 1);
}

#[test]
fn corpus_pages_are_marked() {
    let corpus = Corpus::new(1, 2000).unwrap();
    let profile = Profile::default();
    let mut pages = 0;
    for i in 0..2000 {
        let info = corpus.info(i).unwrap();
        if info.content_type != ContentType::Html || info.bytes < PASS_THROUGH_BYTES_MAX {
            continue;
        }
        pages += 1;
        if pages > 40 {
            break;
        }
        let page = corpus.body(i).unwrap();
        let Distilled::Transformed {
            bytes,
            content_type,
        } = distill(ContentType::Html, &page, &profile, &Limits::default()).unwrap()
        else {
            panic!("{} passed through", info.path);
        };
        assert_eq!(content_type, ContentType::Html);
        let page = String::from_utf8(page).unwrap();
        let out = String::from_utf8(bytes).unwrap();
        let images = page.matches("<img ").count();
        assert_eq!(
            out.matches(&format!("{DISTILLED_ATTRIBUTE}=")).count(),
            images
        );
        // Corpus pages' tags are written the way the rewriter writes them back, so taking the
        // marks and the toolbar out gives the original byte for byte.
        let back = out
            .replacen(&toolbar(&profile), "", 1)
            .replace(" data-cb-distilled=\"q25-s0.5\"", "");
        assert_eq!(back, page);
    }
    assert!(pages > 20);
}

#[test]
fn toolbar_only_where_asked_and_possible() {
    let no_toolbar = Profile {
        toolbar: false,
        ..Profile::default()
    };
    let out = String::from_utf8(munge_html(PAGE.as_bytes(), &no_toolbar).unwrap()).unwrap();
    assert!(!out.contains(TOOLBAR_ID));
    assert_eq!(out.matches(DISTILLED_ATTRIBUTE).count(), 3);
    // A fragment without <body>: marks, no toolbar.
    let fragment = b"<p>just <img src=\"/obj/1.gif\"> a fragment</p>";
    let out = String::from_utf8(munge_html(fragment, &Profile::default()).unwrap()).unwrap();
    assert_eq!(
        out,
        "<p>just <img src=\"/obj/1.gif\" data-cb-distilled=\"q25-s0.5\"> a fragment</p>"
    );
    // Two <body> tags (broken pages exist): one toolbar.
    let twice = b"<html><body><p>a</p><body><p>b</p></html>";
    let out = String::from_utf8(munge_html(twice, &Profile::default()).unwrap()).unwrap();
    assert_eq!(out.matches(TOOLBAR_ID).count(), 1);
}

#[test]
fn bytes_that_are_not_utf8_pass_untouched() {
    let latin1 = b"<html><body><p>caf\xe9 \xff\xfe</p><img src=a></body></html>";
    let out = munge_html(latin1, &Profile::default()).unwrap();
    assert!(contains(&out, b"<p>caf\xe9 \xff\xfe</p>"));
    // Random bytes: an error or some output, never a panic.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let mut input = vec![0u8; rng.random_range(0..3000)];
        rng.fill(&mut input[..]);
        if rng.random_bool(0.5) {
            input.splice(0..0, b"<html><body><img src=".iter().copied());
        }
        let outcome = catch_unwind(|| munge_html(&input, &Profile::default()));
        assert!(outcome.is_ok());
    }
}

#[test]
fn profiles_are_validated_by_field() {
    assert_eq!(Profile::default().validate(), Ok(()));
    let bad_quality = Profile {
        quality: 0,
        ..Profile::default()
    };
    assert!(bad_quality.validate().unwrap_err().starts_with("quality"));
    for scale in [0.0, 0.049, 1.01, f32::NAN, f32::INFINITY, -0.5] {
        let bad = Profile {
            scale,
            ..Profile::default()
        };
        let message = bad.validate().unwrap_err();
        assert!(message.starts_with("scale"), "{message}");
    }
    let bad_scale = Profile {
        scale: 2.0,
        ..Profile::default()
    };
    let jpeg = &images(ContentType::Jpeg, 64 * 1024, 1)[0];
    assert!(matches!(
        distill(ContentType::Jpeg, jpeg, &bad_scale, &Limits::default()),
        Err(TransformError::Profile(m)) if m.contains("scale")
    ));
    // Serde: partial profiles take defaults, unknown keys are refused.
    let p: Profile = serde_json::from_str(r#"{"quality": 40, "toolbar": false}"#).unwrap();
    assert_eq!(
        p,
        Profile {
            quality: 40,
            toolbar: false,
            ..Profile::default()
        }
    );
    let e = serde_json::from_str::<Profile>(r#"{"qualty": 40}"#).unwrap_err();
    assert!(e.to_string().contains("qualty"), "{e}");
}

#[test]
fn expected_dimensions_round_and_stay_positive() {
    let at = |scale| Profile {
        scale,
        ..Profile::default()
    };
    assert_eq!(expected_dimensions((300, 200), &at(0.5)), (150, 100));
    assert_eq!(expected_dimensions((301, 201), &at(0.5)), (151, 101));
    assert_eq!(expected_dimensions((100, 3), &at(0.05)), (5, 1));
    assert_eq!(expected_dimensions((1, 1), &at(0.05)), (1, 1));
    assert_eq!(expected_dimensions((640, 480), &at(1.0)), (640, 480));
    assert_eq!(expected_dimensions((0, 0), &at(0.5)), (1, 1));
}

/// What distilling costs (run in release: `cargo test --release -p cluster --lib
/// web::transform::tests::distill_cost -- --ignored --nocapture`). TranSend reports ~8 ms per
/// KB of GIF on 1997 hardware.
#[test]
#[ignore]
fn distill_cost() {
    let profile = Profile::default();
    let limits = Limits::default();
    let corpus = Corpus::new(1, 20_000).unwrap();
    for (content_type, low, high) in [
        (ContentType::Jpeg, 9_000, 11_000),
        (ContentType::Gif, 3_000, 4_000),
        (ContentType::Jpeg, 40_000, 60_000),
        (ContentType::Html, 4_000, 6_000),
    ] {
        let inputs: Vec<Vec<u8>> = (0..20_000)
            .filter_map(|i| {
                let info = corpus.info(i)?;
                (info.content_type == content_type && (low..=high).contains(&info.bytes))
                    .then(|| corpus.body(i).unwrap())
            })
            .take(20)
            .collect();
        let bytes: usize = inputs.iter().map(Vec::len).sum();
        let mut out_bytes = 0;
        let rounds = 10;
        let start = std::time::Instant::now();
        let cpu_start = thread_cpu_seconds();
        for _ in 0..rounds {
            for input in &inputs {
                out_bytes += match distill(content_type, input, &profile, &limits).unwrap() {
                    Distilled::Transformed { bytes, .. } => bytes.len(),
                    Distilled::PassThrough => input.len(),
                };
            }
        }
        let wall = start.elapsed().as_secs_f64();
        // CPU time of this thread: what the work cost, however busy the machine is.
        let seconds = thread_cpu_seconds() - cpu_start;
        let n = (inputs.len() * rounds) as f64;
        let kb = (bytes * rounds) as f64 / 1024.0;
        eprintln!(
            "{content_type:?} {low}-{high} B (mean {:.0} B): {:.3} ms CPU per object, {:.3} ms CPU per KB ({:.3} ms wall per object), output {:.0} % of input",
            bytes as f64 / inputs.len() as f64,
            seconds * 1e3 / n,
            seconds * 1e3 / kb,
            wall * 1e3 / n,
            100.0 * out_bytes as f64 / (bytes * rounds) as f64
        );
    }
}

fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Every image of a corpus above 1 KB distills smaller with the default profile (release build).
#[test]
#[ignore]
fn every_corpus_image_distills_smaller() {
    let corpus = Corpus::new(2024, 20_000).unwrap();
    let (profile, limits) = (Profile::default(), Limits::default());
    let (mut images, mut in_bytes, mut out_bytes) = (0, 0, 0);
    for i in 0..20_000 {
        let info = corpus.info(i).unwrap();
        if !matches!(info.content_type, ContentType::Gif | ContentType::Jpeg)
            || info.bytes < PASS_THROUGH_BYTES_MAX
        {
            continue;
        }
        let original = corpus.body(i).unwrap();
        let distilled = distill_jpeg(&original, &profile, &limits).unwrap();
        assert!(distilled.len() < original.len(), "{}", info.path);
        images += 1;
        in_bytes += original.len();
        out_bytes += distilled.len();
    }
    eprintln!(
        "{images} images, {in_bytes} bytes distilled to {out_bytes} ({:.1} %)",
        100.0 * out_bytes as f64 / in_bytes as f64
    );
}
