//! The routing table: every served name and adapter name mapped to its engine, rebuilt from
//! the models' entries when names change. Apart because the front reads it on every request
//! and needs nothing else of the state to do so.

use std::collections::HashMap;
use std::sync::Arc;

use super::model::ModelStatus;
use super::phase::Phase;
use crate::plan::LaunchPlan;

/// Where a request for a name goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index of the model in the plan and the snapshot.
    pub index: usize,
    /// The model's name.
    pub model: Arc<str>,
    /// `127.0.0.1:PORT` of its engine.
    pub authority: Arc<str>,
    /// The engine's default `/predict` path.
    pub predict_route: Arc<str>,
    /// The engine's Prometheus path (its profile's), `None` when it has none.
    pub metrics_path: Option<Arc<str>>,
    /// The `"model"` the engine wants for its base model, when not the served name (TGI).
    pub request_model: Option<Arc<str>>,
    /// The engine takes only UUIDs as `X-Request-Id` (llama-cpp-python).
    pub uuid_request_ids: bool,
    /// `Bearer KEY` for the engine's own API key, when it has one.
    pub engine_authorization: Option<Arc<str>>,
}

/// Every served name and adapter name, mapped to its engine.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    routes: HashMap<String, Route>,
    /// Model entries in index order (one per engine), for the single-model default.
    pub models: Vec<Route>,
    /// Every served name and adapter name, in plan order, for `/v1/models`.
    pub names: Vec<ServedName>,
    /// Routes by model index (`None` for a retired model).
    by_index: Vec<Option<Route>>,
}

/// One name requests can use.
#[derive(Debug, Clone)]
pub struct ServedName {
    /// The name.
    pub name: String,
    /// Index of the model whose engine serves it.
    pub model: usize,
    /// True for a LoRA adapter.
    pub adapter: bool,
}

impl RoutingTable {
    /// Builds the table from the plan.
    pub fn from_plan(plan: &LaunchPlan) -> Self {
        let models: Vec<ModelStatus> = plan
            .models
            .iter()
            .map(|m| ModelStatus::from_launch(m, Phase::Starting))
            .collect();
        RoutingTable::build(&models)
    }

    /// Builds the table from the models' entries: served names, configured and run-time
    /// adapters of every model that is not retired.
    pub fn build(models: &[ModelStatus]) -> Self {
        let mut table = RoutingTable::default();
        for (index, m) in models.iter().enumerate().filter(|(_, m)| !m.retired) {
            let route = Route {
                index,
                model: m.name.as_str().into(),
                authority: format!("127.0.0.1:{}", m.port).into(),
                predict_route: m.predict_route.as_str().into(),
                metrics_path: m.metrics_path.as_deref().map(Into::into),
                request_model: m.request_model.as_deref().map(Into::into),
                uuid_request_ids: m.uuid_request_ids,
                engine_authorization: m.engine_authorization.as_deref().map(Into::into),
            };
            table.models.push(route.clone());
            if table.by_index.len() <= index {
                table.by_index.resize(index + 1, None);
            }
            table.by_index[index] = Some(route.clone());
            let names = m.served_names.iter().map(|n| (n, false));
            let adapters = m
                .adapters
                .iter()
                .chain(m.runtime_adapters.iter().map(|a| &a.name))
                .map(|n| (n, true));
            for (name, adapter) in names.chain(adapters) {
                table.routes.insert(name.clone(), route.clone());
                table.names.push(ServedName {
                    name: name.clone(),
                    model: index,
                    adapter,
                });
            }
        }
        table
    }

    /// The route of the model at `index`, unless it is retired.
    pub fn route(&self, index: usize) -> Option<&Route> {
        self.by_index.get(index).and_then(Option::as_ref)
    }

    /// True when a name is served (a model's or an adapter's).
    pub fn contains(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// The route for a request's `"model"`; `None` with several models is resolved by the
    /// caller (400), with exactly one model it is that model.
    pub fn lookup(&self, name: Option<&str>) -> Lookup<'_> {
        match name {
            Some(n) => self.routes.get(n).map_or(Lookup::Unknown, Lookup::Found),
            None if self.models.len() == 1 => Lookup::Found(&self.models[0]),
            None => Lookup::Missing,
        }
    }

    /// True when `name` is a LoRA adapter's name.
    pub fn is_adapter(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.adapter && n.name == name)
    }

    /// Every name, comma-separated, for "unknown model" messages.
    pub fn available(&self) -> String {
        self.names
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The result of [`RoutingTable::lookup`].
#[derive(Debug)]
pub enum Lookup<'a> {
    /// Route to this engine.
    Found(&'a Route),
    /// No such name.
    Unknown,
    /// No `"model"` and several models.
    Missing,
}
