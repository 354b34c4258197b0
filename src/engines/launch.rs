//! What the launcher adds to an engine: its full command line ([`argv`]) with the
//! launcher's own flags (host, port, per-instance flags), its environment, and the extra
//! loopback ports it needs.

use super::{Engine, EnvValue, PerInstance, dashed};
use crate::config::{Arg, EngineArgs};

/// How many loopback ports an engine of this profile needs besides its own.
pub fn extra_ports(engine: Engine, args: &EngineArgs) -> usize {
    let p = engine.profile();
    p.per_instance
        .iter()
        .filter(|f| matches!(f, PerInstance::Port(flag) if !args.has(&dashed(flag))))
        .count()
}

/// The variables the launcher sets in the engine's environment (over every other).
pub fn launch_env(engine: Engine, port: u16) -> Vec<(String, String)> {
    engine
        .profile()
        .env
        .iter()
        .map(|(name, value)| {
            let value = match value {
                EnvValue::Host => "127.0.0.1".to_string(),
                EnvValue::Port => port.to_string(),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// The engine's full command line: its command, the model path (positional right after
/// the profile's subcommand when the command ends with it, as `vllm serve MODEL`; else the
/// profile's model flag), the launcher's host and port, the per-instance flags `params` did
/// not set (`extra` holds their ports, in order), then `args`.
pub fn argv(
    engine: Engine,
    cmd: &[String],
    model_path: &str,
    port: u16,
    extra: &[u16],
    args: &EngineArgs,
) -> Vec<String> {
    let p = engine.profile();
    let positional = p
        .model_positional_after
        .is_some_and(|sub| cmd.last().is_some_and(|w| w == sub));
    let mut out = cmd.to_vec();
    if positional {
        out.push(model_path.to_string());
    } else {
        out.extend(Arg::new(p.model_flag, &[model_path]).tokens());
    }
    let own = launch_args(engine, port, extra, args);
    out.extend(own.iter().flat_map(Arg::tokens));
    out.extend(args.tokens());
    out
}

/// The launcher's own flags after the model path, in the profile's spelling: host, port,
/// then the per-instance flags `params` did not set (`extra` holds their ports, in order).
fn launch_args(engine: Engine, port: u16, extra: &[u16], args: &EngineArgs) -> Vec<Arg> {
    let p = engine.profile();
    let mut out = vec![
        Arg::new(p.host_flag, &["127.0.0.1"]),
        Arg::new(p.port_flag, &[&port.to_string()]),
    ];
    let mut extra = extra.iter();
    for item in p.per_instance {
        match *item {
            PerInstance::Port(flag) if !args.has(&dashed(flag)) => {
                if let Some(port) = extra.next() {
                    out.push(Arg::new(flag, &[&port.to_string()]));
                }
            }
            PerInstance::TmpPath(flag) if !args.has(&dashed(flag)) => {
                let path = format!("/tmp/modelmux-{}-{port}", p.name);
                out.push(Arg::new(flag, &[&path]));
            }
            _ => {}
        }
    }
    out
}
