//! Flags in the wrong vocabulary: the check that refuses a flag spelled for another server
//! (or with the wrong separator), and the removal of the flags the launcher sets itself.
//! Both look across every profile, so they live beside the profiles rather than in one.

use super::{Concept, Engine, FlagStyle, Profile, ServedName, dashed, params_err};
use crate::config::{ConfigError, EngineArgs};

/// Refuses flags spelled for another server: a wrong separator, or a flag of another
/// profile's vocabulary that this one does not know.
pub(super) fn check_vocabulary(
    p: &Profile,
    args: &EngineArgs,
    origin: &str,
) -> Result<(), ConfigError> {
    for arg in &args.args {
        let respelled = || {
            let fixed = match (p.flag_style, arg.spelling.strip_prefix("--")) {
                (FlagStyle::Underscores, Some(rest)) => format!("--{}", rest.replace('-', "_")),
                _ => dashed(&arg.spelling),
            };
            params_err(
                origin,
                format!(
                    "{} is not how {} spells it: use {fixed}",
                    arg.spelling, p.name
                ),
            )
        };
        // `--served-model-name` names the model for modelmux where the server has no flag.
        let modelmux_own = p.served_name == ServedName::Absent && arg.name == "--served-model-name";
        if p.knows(&arg.name) || modelmux_own {
            if !p.spelled_right(&arg.spelling) && !modelmux_own {
                return Err(respelled());
            }
            continue;
        }
        for other in Engine::ALL.map(Engine::profile) {
            if std::ptr::eq(other, p) {
                continue;
            }
            let Some(concept) = other.concept_of(&other.canonical(&arg.spelling)) else {
                continue;
            };
            // Short launcher aliases mean other things elsewhere (`-p`: TGI's port,
            // llama.cpp's prompt); the launcher's own flags win anyway.
            let short = !arg.spelling.starts_with("--");
            if short && matches!(concept, Concept::ModelPath | Concept::Host | Concept::Port) {
                continue;
            }
            let advice = match p.flag(concept) {
                Some(own) => format!("{} spells it {own}", p.name),
                None => format!("{} has no such flag", p.name),
            };
            return Err(params_err(
                origin,
                format!(
                    "{} is a flag of {}, not of {} (this model's engine): {advice}",
                    arg.spelling, other.name, p.name
                ),
            ));
        }
        if !p.spelled_right(&arg.spelling) {
            return Err(respelled());
        }
    }
    Ok(())
}

/// Removes the flags the launcher sets itself (model path, host, port) in any server's
/// spelling, with a warning each.
pub(super) fn drop_launcher_flags(
    p: &Profile,
    args: &mut EngineArgs,
    origin: &str,
    warnings: &mut Vec<String>,
) {
    let launcher = [Concept::ModelPath, Concept::Host, Concept::Port];
    let own = |c: Concept| match c {
        Concept::ModelPath => p.model_flag,
        Concept::Host => p.host_flag,
        _ => p.port_flag,
    };
    args.args.retain(|arg| {
        // This server's spellings, short ones included, and other servers' long ones (a
        // short flag means something else elsewhere: `-p` is TGI's port, llama.cpp's prompt).
        let concept = Engine::ALL
            .map(Engine::profile)
            .into_iter()
            .filter(|q| std::ptr::eq(*q, p) || arg.spelling.starts_with("--"))
            .find_map(|q| q.concept_of(&q.canonical(&arg.spelling)))
            .filter(|c| launcher.contains(c));
        match concept {
            Some(c) => {
                warnings.push(format!(
                    "{origin}: {} {} is ignored; modelmux sets {} itself",
                    arg.spelling,
                    arg.values.join(" "),
                    own(c)
                ));
                false
            }
            None => true,
        }
    });
}
