//! The deployment files (deploy/kubernetes/*.yaml, deploy/compose.yaml and their configuration
//! files) checked as far as this machine allows without a Kubernetes cluster or Docker daemon:
//! the YAML parses, every embedded node configuration and experiment is accepted by
//! clusterbench's own parsers, every command line parses with clusterbench's own CLI, and the
//! names agree (peers, services, agents, target front ends, replica and completion counts).

use std::collections::BTreeSet;

use clap::Parser as _;
use clusterbench::cli::Cli;
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn yaml_docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

use serde::Deserialize as _;

fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Parses a clusterbench command line (without the program name) with the real CLI, given the
/// environment variables the container sets (their values do not matter here).
fn parses(args: &[String], env: &[String]) {
    let mut argv = vec!["clusterbench".to_string()];
    argv.extend(args.iter().cloned());
    // What clap would take from the environment, as flags.
    for (var, command, flag) in [
        ("CLUSTERBENCH_AGENT_TOKEN", "agent", "--token"),
        ("CLUSTERBENCH_ADMIN_TOKEN", "node", "--admin-token"),
    ] {
        if env.iter().any(|e| e == var) && args.first().map(String::as_str) == Some(command) {
            argv.extend([flag.to_string(), "from-the-environment".to_string()]);
        }
    }
    if let Err(e) = Cli::try_parse_from(&argv) {
        panic!("{argv:?} does not parse: {e}");
    }
}

/// The names of a Kubernetes container's environment variables.
fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_sequence()
        .map(|e| {
            e.iter()
                .map(|v| v["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{v:?} is not a list"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The node configuration parses and validates as each node id, and lists exactly `peers`.
fn check_node_config(text: &str, peers: &[String]) {
    let config = cluster::mail::config::NodeConfig::from_toml(text).unwrap();
    let listed: Vec<String> = config
        .cluster
        .peers
        .iter()
        .map(|p| p.addr.clone())
        .collect();
    assert_eq!(listed, peers);
    for p in &config.cluster.peers {
        let mut c = config.clone();
        c.id = p.id;
        c.validate()
            .unwrap_or_else(|e| panic!("as node {}: {e}", p.id));
    }
}

fn experiment(text: &str) -> loadgen::experiment::Experiment {
    loadgen::experiment::Experiment::from_table(toml::from_str(text).unwrap()).unwrap()
}

#[test]
fn kubernetes_manifests_agree_with_each_other_and_with_clusterbench() {
    let mut docs = yaml_docs("deploy/kubernetes/nodes.yaml");
    docs.extend(yaml_docs("deploy/kubernetes/agents.yaml"));
    for d in &docs {
        for key in ["apiVersion", "kind"] {
            assert!(d[key].is_string(), "{key} missing: {d:?}");
        }
        assert!(d["metadata"]["name"].is_string());
    }

    // Nodes: a StatefulSet behind a headless service; peers named after its pods.
    let sts = find(&docs, "StatefulSet", "cb-node");
    let service = str_of(sts, &["spec", "serviceName"]);
    let svc = find(&docs, "Service", service);
    assert_eq!(svc["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        svc["spec"]["selector"]["app"],
        sts["spec"]["template"]["metadata"]["labels"]["app"]
    );
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    let peers: Vec<String> = (0..replicas)
        .map(|i| format!("cb-node-{i}.{service}:7000"))
        .collect();
    let config = find(&docs, "ConfigMap", "cb-node-config");
    check_node_config(str_of(config, &["data", "node.toml"]), &peers);
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let shell = strings(&container["args"]).join(" ");
    assert!(shell.contains("${HOSTNAME##*-}"), "{shell}");
    for ordinal in 0..replicas {
        // What the shell line becomes in pod cb-node-<ordinal>.
        let line = shell
            .replace("exec clusterbench ", "")
            .replace("$(( ${HOSTNAME##*-} + 1 ))", &(ordinal + 1).to_string());
        parses(
            &line
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>(),
            &env_names(container),
        );
    }

    // Agents: an Indexed Job whose pods the experiment names; the coordinator's command.
    let job = find(&docs, "Job", "cb-agents");
    assert_eq!(job["spec"]["completionMode"].as_str(), Some("Indexed"));
    let subdomain = str_of(job, &["spec", "template", "spec", "subdomain"]);
    find(&docs, "Service", subdomain);
    let agent = &job["spec"]["template"]["spec"]["containers"][0];
    parses(&strings(&agent["args"]), &env_names(agent));
    let e = experiment(str_of(
        find(&docs, "ConfigMap", "cb-experiment"),
        &["data", "experiment.toml"],
    ));
    let completions = job["spec"]["completions"].as_u64().unwrap();
    let agents: Vec<String> = (0..completions)
        .map(|i| format!("cb-agents-{i}.{subdomain}:7700"))
        .collect();
    assert_eq!(e.loadgen.agents, agents);
    let target = e.target.as_ref().unwrap();
    let fronts: BTreeSet<String> = target
        .smtp
        .iter()
        .chain(&target.pop3)
        .chain(&target.imap)
        .map(|a| a.rsplit_once(':').unwrap().0.to_string())
        .collect();
    let pods: BTreeSet<String> = (0..replicas)
        .map(|i| format!("cb-node-{i}.{service}"))
        .collect();
    assert_eq!(fronts, pods);
    let coordinator = find(&docs, "Job", "cb-coordinator");
    let c = &coordinator["spec"]["template"]["spec"]["containers"][0];
    parses(&strings(&c["args"]), &env_names(c));
}

#[test]
fn the_compose_file_agrees_with_its_configuration_files() {
    let mut compose = yaml_docs("deploy/compose.yaml").remove(0);
    // `<<: *node` merge keys, as Compose applies them.
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<String> = services
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let node_toml = std::fs::read_to_string(format!("{ROOT}/deploy/compose/node.toml")).unwrap();
    let nodes: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with("node"))
        .cloned()
        .collect();
    let peers: Vec<String> = nodes.iter().map(|n| format!("{n}:7000")).collect();
    check_node_config(&node_toml, &peers);
    for (name, service) in services {
        let name = name.as_str().unwrap();
        // Anchored services (<<: *node) take the command of their own entry.
        let command = strings(&service["command"]);
        let env: Vec<String> = service["environment"]
            .as_mapping()
            .map(|m| m.keys().map(|k| k.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        parses(&command, &env);
        if name.starts_with("node") {
            let id = command
                .iter()
                .position(|a| a == "--id")
                .map(|i| command[i + 1].clone())
                .unwrap();
            assert_eq!(format!("node{id}"), name);
        }
    }
    let e = experiment(
        &std::fs::read_to_string(format!("{ROOT}/deploy/compose/experiment.toml")).unwrap(),
    );
    for agent in &e.loadgen.agents {
        let host = agent.rsplit_once(':').unwrap().0;
        assert!(names.contains(host), "agent {host} is not a service");
    }
    let target = e.target.as_ref().unwrap();
    for front in target.smtp.iter().chain(&target.pop3).chain(&target.imap) {
        let host = front.rsplit_once(':').unwrap().0;
        assert!(names.contains(host), "front end {host} is not a service");
    }
}

#[test]
fn the_web_cluster_manifests_agree_with_each_other_and_with_clusterbench() {
    let docs = yaml_docs("deploy/kubernetes/web.yaml");
    let sts = find(&docs, "StatefulSet", "cb-web-node");
    let service = str_of(sts, &["spec", "serviceName"]);
    let svc = find(&docs, "Service", service);
    assert_eq!(svc["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        svc["spec"]["selector"]["app"],
        sts["spec"]["template"]["metadata"]["labels"]["app"]
    );
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    // The configuration: valid, its nodes the StatefulSet's pods, its origin the origin Service.
    let text = str_of(
        find(&docs, "ConfigMap", "cb-web-config"),
        &["data", "web.toml"],
    );
    let config = cluster::web::config::WebConfig::from_toml(text)
        .unwrap_or_else(|e| panic!("web.toml: {e}"));
    let nodes: Vec<String> = config.nodes.iter().map(|n| n.addr.clone()).collect();
    let pods: Vec<String> = (0..replicas)
        .map(|i| format!("cb-web-node-{i}.{service}:7100"))
        .collect();
    assert_eq!(nodes, pods);
    let origin = find(&docs, "Service", "cb-origin");
    let port = origin["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(config.origins, vec![format!("cb-origin:{port}")]);
    let deployment = find(&docs, "Deployment", "cb-origin");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    parses(&strings(&container["args"]), &env_names(container));
    // The node daemons' command, as each pod runs it.
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let env = env_names(container);
    assert!(env.iter().any(|e| e == "POD_IP"), "{env:?}");
    let shell = strings(&container["args"]).join(" ");
    for ordinal in 0..replicas {
        let line = shell
            .replace("exec clusterbench ", "")
            .replace("$(( ${HOSTNAME##*-} + 1 ))", &(ordinal + 1).to_string())
            .replace("$POD_IP", "10.0.0.9");
        parses(
            &line
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>(),
            &env,
        );
    }
}

#[test]
fn the_web_compose_file_agrees_with_its_configuration() {
    let mut compose = yaml_docs("deploy/compose-web.yaml").remove(0);
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/compose/web.toml")).unwrap();
    let config = cluster::web::config::WebConfig::from_toml(&text).unwrap();
    for n in &config.nodes {
        let name = n.addr.split(':').next().unwrap();
        let service = &services[&Value::from(name)];
        assert!(service.is_mapping(), "no service {name} for node {}", n.id);
        let shell = strings(&service["command"]).join(" ");
        let line = shell
            .replace("exec clusterbench ", "")
            .replace("$$(hostname -i)", "10.0.0.9");
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        assert!(line.contains(&format!("--id {}", n.id)), "{line}");
        parses(&args, &[]);
    }
    let origin_host = config.origins[0].split(':').next().unwrap();
    let origin = &services[&Value::from(origin_host)];
    parses(&strings(&origin["command"]), &[]);
    assert!(strings(&origin["command"])
        .join(" ")
        .contains(&config.origins[0].replace(origin_host, "0.0.0.0")));
}
