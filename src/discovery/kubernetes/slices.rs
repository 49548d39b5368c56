//! The EndpointSlices of one Service as the watch last saw them, and the backends they make:
//! the first address of each ready endpoint with the selected port.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{BackendSpec, KubernetesPort};

/// `discovery.k8s.io/v1` EndpointSlice, the fields used.
#[derive(Debug, Deserialize)]
pub(super) struct EndpointSlice {
    pub metadata: Metadata,
    #[serde(default)]
    endpoints: Option<Vec<Endpoint>>,
    #[serde(default)]
    ports: Option<Vec<Port>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Endpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<Conditions>,
}

#[derive(Debug, Deserialize)]
struct Conditions {
    ready: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Port {
    #[serde(default)]
    name: Option<String>,
    port: Option<u16>,
}

/// `EndpointSliceList`.
#[derive(Debug, Deserialize)]
pub(super) struct SliceList {
    pub metadata: Metadata,
    #[serde(default)]
    pub items: Vec<EndpointSlice>,
}

/// One line of a watch.
#[derive(Debug, Deserialize)]
pub(super) struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub object: serde_json::Value,
}

/// `Status`, the object of an `ERROR` event.
#[derive(Debug, Deserialize)]
pub(super) struct Status {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub message: String,
}

/// Each slice's backends by slice name.
#[derive(Debug, Default)]
pub(super) struct Slices {
    backends_by_slice: BTreeMap<String, Vec<BackendSpec>>,
}

impl Slices {
    pub(super) fn from_list(list: SliceList, port: &KubernetesPort) -> Self {
        let mut slices = Self::default();
        for slice in list.items {
            slices.apply(slice, port);
        }
        slices
    }

    /// Adds or replaces a slice.
    pub(super) fn apply(&mut self, slice: EndpointSlice, port: &KubernetesPort) {
        let backends = backends(&slice, port);
        self.backends_by_slice.insert(slice.metadata.name, backends);
    }

    pub(super) fn remove(&mut self, name: &str) {
        self.backends_by_slice.remove(name);
    }

    /// Every slice's backends, ordered by target, each target once (a Service's endpoint can
    /// briefly sit in two slices while the controller moves it).
    pub(super) fn backends(&self) -> Vec<BackendSpec> {
        let mut all: BTreeMap<String, BackendSpec> = BTreeMap::new();
        for backend in self.backends_by_slice.values().flatten() {
            all.entry(backend.target())
                .or_insert_with(|| backend.clone());
        }
        all.into_values().collect()
    }
}

/// The ready endpoints of one slice. A slice without the selected port gives none.
fn backends(slice: &EndpointSlice, wanted: &KubernetesPort) -> Vec<BackendSpec> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports.iter().find_map(|port| match wanted {
        KubernetesPort::Name(name) => port
            .port
            .filter(|_| port.name.as_deref().unwrap_or_default() == name),
        KubernetesPort::Number(number) => port.port.filter(|found| found == number),
    });
    let Some(port) = port else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .flatten()
        // An unset `ready` is to be read as ready (the API's documentation).
        .filter(|endpoint| {
            endpoint
                .conditions
                .as_ref()
                .and_then(|conditions| conditions.ready)
                .unwrap_or(true)
        })
        // Consumers use the first address; the others are not to be relied on.
        .filter_map(|endpoint| endpoint.addresses.first())
        .map(|address| BackendSpec {
            host: address.clone(),
            port,
            weight: 1,
            priority: 1,
            max_connections: None,
            sni: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn ready_endpoints_with_the_selected_port() {
        let api = slice(serde_json::json!({
            "metadata": {"name": "kubernetes", "resourceVersion": "7"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.11"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.12", "10.9.9.9"]},
                {"addresses": ["10.0.0.13"], "conditions": {"ready": false, "terminating": true}},
            ],
            "ports": [{"name": "metrics", "port": 9100}, {"name": "https", "port": 6443}],
        }));
        let by_name = backends(&api, &KubernetesPort::Name("https".into()));
        let targets: Vec<String> = by_name.iter().map(BackendSpec::target).collect();
        assert_eq!(targets, ["10.0.0.11:6443", "10.0.0.12:6443"]);
        let by_number = backends(&api, &KubernetesPort::Number(9100));
        assert_eq!(by_number[0].target(), "10.0.0.11:9100");
        assert!(backends(&api, &KubernetesPort::Name("http".into())).is_empty());
        assert!(backends(&api, &KubernetesPort::Number(80)).is_empty());
    }

    #[test]
    fn slices_are_merged_and_replaced_by_name() {
        let https = KubernetesPort::Name("https".into());
        let make = |name: &str, address: &str| {
            slice(serde_json::json!({
                "metadata": {"name": name},
                "endpoints": [{"addresses": [address]}],
                "ports": [{"name": "https", "port": 6443}],
            }))
        };
        let mut slices = Slices::default();
        slices.apply(make("a", "fd00::2"), &https);
        slices.apply(make("b", "10.0.0.11"), &https);
        slices.apply(make("c", "10.0.0.11"), &https);
        let targets = |slices: &Slices| -> Vec<String> {
            slices.backends().iter().map(BackendSpec::target).collect()
        };
        assert_eq!(targets(&slices), ["10.0.0.11:6443", "[fd00::2]:6443"]);
        slices.apply(make("a", "10.0.0.12"), &https);
        slices.remove("b");
        assert_eq!(targets(&slices), ["10.0.0.11:6443", "10.0.0.12:6443"]);
    }
}
