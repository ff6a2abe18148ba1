//! `clusterbench trace synth` and `trace fit` as a user runs them: a synthesized trace has the
//! mix, sizes and popularity asked, reads back as valid CLF with nothing skipped (plain and
//! gzip, the same requests), a log with garbage lines is fitted with the garbage counted and
//! exit 0, and bad settings exit 2 naming the key.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::BIN;

fn clusterbench(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The figures after `name` on the line starting with it: `gif  50.2 % (50.0 %) 3408 (3428)`
/// gives `[50.2, 50.0, 3408, 3428]`.
fn numbers(text: &str, name: &str) -> Vec<f64> {
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no line {name:?} in\n{text}"));
    line[name.len()..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|s| !s.is_empty() && *s != ".")
        .map(|s| s.parse().unwrap())
        .collect()
}

fn synth(out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "trace",
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "3",
        "--duration-s",
        "3600",
        "--mean-per-s",
        "60",
        "--objects",
        "1000",
    ];
    args.extend_from_slice(extra);
    stdout(&clusterbench(&args))
}

#[test]
fn synth_writes_the_trace_asked_and_fit_reads_it_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("trace.log");
    let printed = synth(&plain, &["--alpha", "0.8"]);
    let requests = numbers(&printed, "wrote ")[0];
    assert!(requests > 50_000.0, "{printed}");
    for kind in ["gif", "html", "jpeg", "other"] {
        let [share, asked_share, mean, asked_mean] = numbers(&printed, kind)[..4] else {
            panic!("{printed}")
        };
        assert!((share - asked_share).abs() < 3.0, "{kind}\n{printed}");
        assert!((mean / asked_mean - 1.0).abs() < 0.15, "{kind}\n{printed}");
    }
    let [alpha, asked_alpha] = numbers(&printed, "alpha ")[..2] else {
        panic!("{printed}")
    };
    assert_eq!(asked_alpha, 0.8);
    assert!((alpha - asked_alpha).abs() < 0.1, "{printed}");
    for scale in ["2 min", "30 s", "1 s"] {
        assert!(
            printed.contains(&format!("peak/mean, {scale} buckets: ")),
            "{printed}"
        );
    }

    // Read back: valid CLF, every line an entry, the same figures.
    let fitted = stdout(&clusterbench(&["trace", "fit", plain.to_str().unwrap()]));
    assert!(
        fitted.contains(&format!(
            "{} lines, {} entries, 0 skipped",
            requests, requests
        )),
        "{fitted}"
    );
    let report = |text: &str| text[text.find("requests: ").unwrap()..].to_string();
    assert_eq!(report(&fitted), report(&printed));

    // The same seed with --gzip: a gzip file holding the same lines.
    let gz = dir.path().join("trace.log.gz");
    let printed_gz = synth(&gz, &["--alpha", "0.8", "--gzip"]);
    assert_eq!(report(&printed_gz), report(&printed));
    let bytes = std::fs::read(&gz).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
    assert!(bytes.len() < std::fs::metadata(&plain).unwrap().len() as usize / 3);
    let fitted_gz = stdout(&clusterbench(&["trace", "fit", gz.to_str().unwrap()]));
    assert_eq!(report(&fitted_gz), report(&fitted));
}

#[test]
fn synth_reads_a_config_file_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("synth.toml");
    std::fs::write(
        &config,
        "seed = 5\nobjects = 50\nduration_s = 60\nmean_per_s = 10.0\nclients = 3\n\
         mix = { gif = 0.0, html = 1.0, jpeg = 0.0, other = 0.0 }\n",
    )
    .unwrap();
    let out = dir.path().join("t.log");
    let printed = stdout(&clusterbench(&[
        "trace",
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--objects",
        "40",
    ]));
    assert!(printed.contains("asked: seed 5, 40 objects"), "{printed}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        assert!(line.contains("\"GET /obj/"), "{line}");
        assert!(line.contains(".html HTTP/1.0\" 200 "), "{line}");
        assert!(
            line.starts_with("10.0.0.1 ")
                || line.starts_with("10.0.0.2 ")
                || line.starts_with("10.0.0.3 "),
            "{line}"
        );
    }
}

#[test]
fn fit_counts_garbage_lines_and_still_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(&format!(
            "192.168.0.{} - - [01/Nov/1996:09:{:02}:{:02} -0800] \"GET /obj/{}.gif HTTP/1.0\" 200 {}\n",
            i % 7,
            i / 60,
            i % 60,
            i % 10,
            1000 + i
        ));
        if i % 25 == 0 {
            text.push_str("this is not a log line\n");
            text.push_str(
                "192.168.0.1 - - [01/Nov/1996:09:00:00 -0800] \"GET /x.html HTTP/1.0\" OK 5\n",
            );
        }
    }
    std::fs::write(&log, text).unwrap();
    let fitted = stdout(&clusterbench(&["trace", "fit", log.to_str().unwrap()]));
    assert!(
        fitted.contains("108 lines, 100 entries, 8 skipped"),
        "{fitted}"
    );
    assert!(
        fitted.contains("bad status: 4, first at line 3"),
        "{fitted}"
    );
    assert!(fitted.contains("requests: 100 over"), "{fitted}");
    assert!(fitted.contains("gif          100  100.0 %"), "{fitted}");

    // A file that is not there, bad settings: exit 2, naming what is wrong.
    let missing = clusterbench(&["trace", "fit", dir.path().join("nope").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    let out = dir.path().join("t.log");
    for (args, key) in [
        (vec!["--alpha=-1"], "alpha"),
        (vec!["--objects", "0"], "objects"),
        (vec!["--mean-per-s", "0"], "mean_per_s"),
    ] {
        let mut all = vec!["trace", "synth", "--out", out.to_str().unwrap()];
        all.extend(args);
        let output = clusterbench(&all);
        assert_eq!(output.status.code(), Some(2), "{all:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{all:?}: {stderr}");
    }
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "colour = 3\n").unwrap();
    let output = clusterbench(&[
        "trace",
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("colour"));
}
