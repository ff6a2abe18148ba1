//! Node metrics, exposed in Prometheus text format on the admin API's `/metrics`.
//!
//! Counters are plain atomics behind `prometheus-client` families, so the hot paths (a command, a
//! stored message, an fsync) only increment; encoding happens when `/metrics` is scraped.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which front end a connection or command belongs to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

/// Every metric a node exports.
pub struct Metrics {
    registry: Registry,
    pub connections_total: Family<ProtocolLabel, Counter>,
    pub connections_open: Family<ProtocolLabel, Gauge>,
    pub connections_refused_total: Family<ProtocolLabel, Counter>,
    pub commands_total: Family<ProtocolLabel, Counter>,
    pub command_errors_total: Family<ProtocolLabel, Counter>,
    pub messages_stored_total: Counter,
    pub message_bytes_stored_total: Counter,
    pub messages_retrieved_total: Counter,
    pub messages_expunged_total: Counter,
    pub fsyncs_total: Counter,
    pub modelled_syncs_total: Counter,
    pub store_errors_total: Counter,
    pub disk_full_refusals_total: Counter,
    pub compactions_total: Counter,
    pub compacted_bytes_total: Counter,
    pub peer_messages_sent_total: Counter,
    pub peer_messages_received_total: Counter,
    pub peer_messages_dropped_total: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("clusterbench");
        let m = Metrics {
            registry: Registry::default(),
            connections_total: Family::default(),
            connections_open: Family::default(),
            connections_refused_total: Family::default(),
            commands_total: Family::default(),
            command_errors_total: Family::default(),
            messages_stored_total: Counter::default(),
            message_bytes_stored_total: Counter::default(),
            messages_retrieved_total: Counter::default(),
            messages_expunged_total: Counter::default(),
            fsyncs_total: Counter::default(),
            modelled_syncs_total: Counter::default(),
            store_errors_total: Counter::default(),
            disk_full_refusals_total: Counter::default(),
            compactions_total: Counter::default(),
            compacted_bytes_total: Counter::default(),
            peer_messages_sent_total: Counter::default(),
            peer_messages_received_total: Counter::default(),
            peer_messages_dropped_total: Counter::default(),
        };
        registry.register(
            "peer_messages_sent",
            "Messages sent to other nodes",
            m.peer_messages_sent_total.clone(),
        );
        registry.register(
            "peer_messages_received",
            "Messages received from other nodes",
            m.peer_messages_received_total.clone(),
        );
        registry.register(
            "peer_messages_dropped",
            "Peer messages dropped: queue full, link down, or an injected fault",
            m.peer_messages_dropped_total.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections refused at the connection limit",
            m.connections_refused_total.clone(),
        );
        registry.register(
            "commands",
            "Protocol commands received",
            m.commands_total.clone(),
        );
        registry.register(
            "command_errors",
            "Protocol commands answered with an error",
            m.command_errors_total.clone(),
        );
        registry.register(
            "messages_stored",
            "Messages made durable (one per mailbox)",
            m.messages_stored_total.clone(),
        );
        registry.register(
            "message_bytes_stored",
            "Bytes of messages made durable",
            m.message_bytes_stored_total.clone(),
        );
        registry.register(
            "messages_retrieved",
            "Message bodies read by clients",
            m.messages_retrieved_total.clone(),
        );
        registry.register(
            "messages_expunged",
            "Messages removed from mailboxes",
            m.messages_expunged_total.clone(),
        );
        registry.register(
            "fsyncs",
            "fsync calls on the mail log",
            m.fsyncs_total.clone(),
        );
        registry.register(
            "modelled_syncs",
            "Record syncs charged to the modelled disk",
            m.modelled_syncs_total.clone(),
        );
        registry.register(
            "store_errors",
            "Mail log write or sync failures",
            m.store_errors_total.clone(),
        );
        registry.register(
            "disk_full_refusals",
            "Batches of changes refused for want of free disk space",
            m.disk_full_refusals_total.clone(),
        );
        registry.register(
            "compactions",
            "Log segments compacted (live records copied forward, the file deleted)",
            m.compactions_total.clone(),
        );
        registry.register(
            "compacted_bytes",
            "Bytes of log segments deleted by compaction",
            m.compacted_bytes_total.clone(),
        );
        // Create every protocol's series up front, so they are exported (as 0) from the start
        // and rate() over them works before the first event.
        for protocol in ["smtp", "pop3", "imap"] {
            let label = Metrics::protocol(protocol);
            let _ = m.connections_total.get_or_create(&label);
            let _ = m.connections_open.get_or_create(&label);
            let _ = m.connections_refused_total.get_or_create(&label);
            let _ = m.commands_total.get_or_create(&label);
            let _ = m.command_errors_total.get_or_create(&label);
        }
        Metrics { registry, ..m }
    }

    /// Renders every metric in Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }

    /// The transport's counters, shared with this registry.
    pub fn transport(&self) -> crate::core::transport::TransportMetrics {
        crate::core::transport::TransportMetrics {
            sent: self.peer_messages_sent_total.clone(),
            received: self.peer_messages_received_total.clone(),
            dropped: self.peer_messages_dropped_total.clone(),
        }
    }

    pub fn protocol(protocol: &'static str) -> ProtocolLabel {
        ProtocolLabel { protocol }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
