//! Every shipped experiment file is valid: it parses with every key known, and its sweep plans.

use loadgen::experiment::{plan_sweep, Experiment};

#[test]
fn every_workload_file_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut table: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Some(toml::Value::Table(sweep)) = table.remove("sweep") {
            plan_sweep(&sweep).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let experiment =
            Experiment::from_table(table).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The web cluster's settings are read when the cluster starts: check them here too.
        let _: cluster::web::config::WebConfig = toml::Value::Table(experiment.cluster.web.clone())
            .try_into()
            .unwrap_or_else(|e| panic!("{}: cluster.web: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} workload files found");
}

/// `skew_model = "hot-node"` picks the users the bundled cluster's static placement homes on its
/// first node: the load generator's hash must stay the cluster's.
#[test]
fn the_hot_node_is_the_static_home_of_its_users() {
    for nodes in [1, 2, 4, 8, 63] {
        for u in 0..2000 {
            let name = format!("user{u}");
            assert_eq!(
                loadgen::workload::home_slot(&name, nodes),
                cluster::mail::usermap::UserMap::bucket_of(&name, nodes),
                "{name} over {nodes}"
            );
        }
    }
}
