//! [`resolve()`]: a model's parsed `params` turned into its engine's arguments, with the
//! served names and the GPU count read the profile's way. The vocabulary check and the
//! adapters it calls live in `vocabulary.rs` and `adapters.rs`.

use super::adapters::place_adapters;
use super::vocabulary::{check_vocabulary, drop_launcher_flags};
use super::{
    Concept, Engine, GpuCount, ModelInput, Profile, Resolved, ServedName, dashed, params_err,
};
use crate::config::{Arg, ConfigError, EngineArgs};

/// Reads the served names from `params` (or puts the default in), as the profile says.
fn place_served_names(
    p: &Profile,
    args: &mut EngineArgs,
    default_name: &str,
    origin: &str,
) -> Result<Vec<String>, ConfigError> {
    let flag = match p.served_name {
        ServedName::Many(f) | ServedName::One(f) | ServedName::Comma(f) => f,
        ServedName::Absent => {
            let given: Vec<String> = args
                .take("--served-model-name")
                .into_iter()
                .flat_map(|a| a.values)
                .collect();
            return if given.is_empty() {
                Ok(vec![default_name.to_string()])
            } else {
                no_blank_name(given, "--served-model-name", origin)
            };
        }
    };
    let canonical = dashed(flag);
    let given: Vec<Arg> = args
        .args
        .iter()
        .filter(|a| a.name == canonical)
        .cloned()
        .collect();
    let Some(arg) = given.last() else {
        args.args.insert(0, Arg::new(flag, &[default_name]));
        return Ok(vec![default_name.to_string()]);
    };
    let names: Vec<String> = match p.served_name {
        ServedName::Comma(_) => arg
            .values
            .iter()
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        _ => arg.values.clone(),
    };
    match (p.served_name, names.len()) {
        (_, 0) => Err(params_err(
            origin,
            format!("{} needs at least one name", arg.spelling),
        )),
        (ServedName::One(_), n) if n > 1 => Err(params_err(
            origin,
            format!(
                "{} takes one name on {}; got {n}: {}",
                arg.spelling,
                p.name,
                names.join(" ")
            ),
        )),
        _ => no_blank_name(names, &arg.spelling, origin),
    }
}

/// A blank served name could never be asked for (the front reads a blank `"model"` as a
/// name no model has): refused at start instead of serving a model nobody can reach by it.
fn no_blank_name(
    names: Vec<String>,
    spelling: &str,
    origin: &str,
) -> Result<Vec<String>, ConfigError> {
    if names.iter().any(|n| n.trim().is_empty()) {
        return Err(params_err(
            origin,
            format!("{spelling} has an empty name; give every served name some characters"),
        ));
    }
    Ok(names)
}

/// The model's GPU count, as the profile says.
fn gpu_demand(p: &Profile, args: &EngineArgs, origin: &str) -> Result<u32, ConfigError> {
    match p.gpu_count {
        GpuCount::Product {
            factors,
            last_factor_unless,
        } => {
            let skip_last = last_factor_unless.is_some_and(|s| args.has(s));
            let mut n = 1u32;
            for (i, flag) in factors.iter().enumerate() {
                let v = args.positive_int(flag, origin)?;
                if !(skip_last && i + 1 == factors.len()) {
                    n = n.saturating_mul(v);
                }
            }
            Ok(n)
        }
        GpuCount::Shards { flag } => args.positive_int(flag, origin),
        GpuCount::Layers {
            layers,
            offloads_by_default,
            tensor_split,
            devices,
        } => {
            let value = |flag: &str| args.args.iter().rev().find(|a| a.name == flag);
            let offload = match value(layers).and_then(|a| a.values.first()) {
                Some(v) => v.trim() != "0",
                None => offloads_by_default,
            };
            let no_device = devices
                .and_then(value)
                .and_then(|a| a.values.first())
                .is_some_and(|v| v.trim() == "none");
            if !offload || no_device {
                return Ok(0);
            }
            let split = value(tensor_split).map_or(0, |a| {
                a.values
                    .iter()
                    .flat_map(|v| v.split([',', '/']))
                    .filter(|s| !s.trim().is_empty())
                    .count() as u32
            });
            Ok(split.max(1))
        }
    }
}

/// The flags that give a model more than one GPU, as written (`-tp 2`,
/// `--pipeline-parallel-size=2`), for messages that say which to lower; empty when none does.
pub fn gpu_flags(p: &Profile, args: &EngineArgs) -> String {
    let last = |flag: &str| args.args.iter().rev().find(|a| a.name == flag);
    let above_one = |a: &&Arg| {
        let n = a.values.first().and_then(|v| v.trim().parse::<u32>().ok());
        n.is_some_and(|n| n > 1)
    };
    let found: Vec<&Arg> = match p.gpu_count {
        GpuCount::Product {
            factors,
            last_factor_unless,
        } => {
            let skip_last = last_factor_unless.is_some_and(|s| args.has(s));
            let counted = factors.len() - usize::from(skip_last);
            factors[..counted]
                .iter()
                .filter_map(|f| last(f))
                .filter(above_one)
                .collect()
        }
        GpuCount::Shards { flag } => last(flag).filter(above_one).into_iter().collect(),
        GpuCount::Layers { tensor_split, .. } => last(tensor_split)
            .filter(|a| {
                let parts = a.values.iter().flat_map(|v| v.split([',', '/']));
                parts.filter(|s| !s.trim().is_empty()).count() > 1
            })
            .into_iter()
            .collect(),
    };
    let tokens: Vec<String> = found.iter().map(|a| a.tokens().join(" ")).collect();
    tokens.join(" ")
}

/// Turns a model's parsed `params` into its engine's arguments, served names, adapters and
/// GPU count: the other-vocabulary check, launcher flags dropped, `VLLM_PARAMS` merged under
/// a vLLM model's own, adapters in the profile's one flag, the profile's default switches.
pub fn resolve(
    engine: Engine,
    input: ModelInput<'_>,
    warnings: &mut Vec<String>,
) -> Result<Resolved, ConfigError> {
    let p = engine.profile();
    let origin = input.params_origin;
    let mut own = input.own;
    drop_launcher_flags(p, &mut own, input.origin, warnings);
    check_vocabulary(p, &own, origin)?;
    // Served names given only in VLLM_PARAMS are VLLM_PARAMS's to answer for.
    let names_flag = match p.served_name {
        ServedName::Many(f) | ServedName::One(f) | ServedName::Comma(f) => dashed(f),
        ServedName::Absent => "--served-model-name".to_string(),
    };
    let names_origin = match input.global {
        Some(global) if !own.has(&names_flag) && global.has(&names_flag) => "VLLM_PARAMS",
        _ => origin,
    };
    let mut args = match input.global {
        Some(global) => {
            let mut global = global.clone();
            drop_launcher_flags(p, &mut global, input.origin, warnings);
            check_vocabulary(p, &global, "VLLM_PARAMS")?;
            EngineArgs::merged(&global, &own)
        }
        None => own,
    };
    let served_names = place_served_names(p, &mut args, input.default_name, names_origin)?;
    let adapters = place_adapters(p, &mut args, input.fine_tune, origin)?;
    let gpu_demand = gpu_demand(p, &args, origin)?;
    if let Some(tp) = p.flag(Concept::TensorParallel) {
        let n = args.positive_int(&dashed(tp), origin)?;
        if n > 1 && !n.is_power_of_two() {
            warnings.push(format!(
                "{}: tensor-parallel size {n} is not a power of two; most models need the \
                 attention head count to divide by it",
                input.origin
            ));
        }
    }
    for flag in p.default_flags {
        if !args.has(&dashed(flag)) {
            args.args.push(Arg::new(flag, &[]));
        }
    }
    Ok(Resolved {
        args,
        served_names,
        adapters,
        gpu_demand,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(engine: Engine, params: &str) -> String {
        let p = engine.profile();
        gpu_flags(p, &EngineArgs::parse_for(params, "params", p).unwrap())
    }

    #[test]
    fn gpu_flags_are_the_ones_that_give_more_than_one_gpu_as_written() {
        assert_eq!(flags(Engine::Vllm, "-tp 2 --max-model-len 4096"), "-tp 2");
        assert_eq!(
            flags(
                Engine::Vllm,
                "--tensor-parallel-size 1 --pipeline-parallel-size=2"
            ),
            "--pipeline-parallel-size=2"
        );
        assert_eq!(flags(Engine::Vllm, "--max-model-len 4096"), "");
        assert_eq!(
            flags(Engine::Sglang, "--tensor-parallel-size 2 --dp-size 2"),
            "--tensor-parallel-size 2 --dp-size 2"
        );
        assert_eq!(
            flags(
                Engine::Sglang,
                "--tp-size 2 --dp-size 2 --enable-dp-attention"
            ),
            "--tp-size 2"
        );
        assert_eq!(flags(Engine::Tgi, "--num-shard 4"), "--num-shard 4");
        assert_eq!(
            flags(Engine::Llamacpp, "-ngl 99 --tensor-split 3,1"),
            "--tensor-split 3,1"
        );
        assert_eq!(flags(Engine::Llamacpp, "--tensor-split 1"), "");
    }
}
