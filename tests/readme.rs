//! The README's documented node configuration is complete and valid: it parses with every key
//! the node knows, so the documentation cannot drift from the code unnoticed.

#[test]
fn the_readme_configuration_example_parses() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the Configuration section has a TOML example");
    let config = cluster::mail::config::NodeConfig::from_toml(block)
        .unwrap_or_else(|e| panic!("README configuration example does not parse: {e}"));
    // The example shows the defaults.
    let defaults = cluster::mail::config::NodeConfig::default();
    assert_eq!(
        config.limits.message_bytes_max,
        defaults.limits.message_bytes_max
    );
    assert_eq!(config.cluster.membership, defaults.cluster.membership);
    assert_eq!(config.disk, defaults.disk);
}

/// The README's complete experiment example parses with every key the runner knows, and shows
/// the defaults of what it sets.
#[test]
fn the_readme_experiment_example_parses() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Experiment files")
        .nth(1)
        .expect("README has an Experiment files section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the Experiment files section has a TOML example");
    let experiment = loadgen::experiment::Experiment::from_toml(block)
        .unwrap_or_else(|e| panic!("README experiment example does not parse: {e}"));
    let defaults = loadgen::experiment::Experiment::default();
    assert_eq!(experiment.loadgen.smtp, defaults.loadgen.smtp);
    assert_eq!(
        experiment.loadgen.in_flight_max,
        defaults.loadgen.in_flight_max
    );
    assert_eq!(experiment.workload.mix, defaults.workload.mix);
}

/// The README's synthesizer example parses and shows the defaults.
#[test]
fn the_readme_trace_synth_example_shows_the_defaults() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Traces: `clusterbench trace`")
        .nth(1)
        .expect("README has a Traces section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the Traces section has a TOML example");
    let config = loadgen::trace::synth::SynthConfig::from_toml(block)
        .unwrap_or_else(|e| panic!("README synthesizer example does not parse: {e}"));
    assert_eq!(config, loadgen::trace::synth::SynthConfig::default());
}

/// The README's web experiment keys parse with every key the runner knows (the cluster's own
/// tables as the web cluster reads them), and show the HTTP client's defaults.
#[test]
fn the_readme_web_experiment_example_parses() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Web experiments")
        .nth(1)
        .expect("README has a Web experiments section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the Web experiments section has a TOML example");
    let experiment = loadgen::experiment::Experiment::from_toml(block)
        .unwrap_or_else(|e| panic!("README web experiment example does not parse: {e}"));
    assert!(experiment.is_web());
    let _: cluster::web::config::WebConfig = toml::Value::Table(experiment.cluster.web.clone())
        .try_into()
        .unwrap_or_else(|e| panic!("README cluster.web does not parse: {e}"));
    assert_eq!(
        experiment.loadgen.http,
        loadgen::web::client::HttpClient::default()
    );
    let faults = section
        .split("```toml\n")
        .nth(2)
        .and_then(|b| b.split("```").next())
        .expect("the Web experiments section has a faults example");
    let with_faults = format!("[cluster]\nservice = \"web\"\n{faults}");
    loadgen::experiment::Experiment::from_toml(&with_faults)
        .unwrap_or_else(|e| panic!("README web faults example does not parse: {e}"));
}
