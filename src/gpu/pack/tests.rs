use proptest::prelude::*;

use super::*;
use crate::gpu::{Gpu, GpuSource};

const GIB: u64 = 1 << 30;

fn machine(sizes_gib: &[u64]) -> Inventory {
    Inventory {
        source: GpuSource::Override,
        note: None,
        disabled: false,
        gpus: sizes_gib
            .iter()
            .enumerate()
            .map(|(i, &s)| Gpu {
                index: i as u32,
                uuid: String::new(),
                name: "fake".into(),
                memory_total: s * GIB,
                memory_free: s * GIB,
                visible_id: i.to_string(),
                memory_measured: false,
            })
            .collect(),
        distance: Vec::new(),
    }
}

fn model(name: &str, gpus: u32, inside_gib: f64) -> MemDemand {
    MemDemand {
        name: name.into(),
        gpus,
        need: Some(Need {
            inside: (inside_gib * GIB as f64) as u64,
            outside: GIB,
        }),
        fixed_share: None,
        fraction_flag: Some("--gpu-memory-utilization"),
        summary: format!("{name} {inside_gib} GiB"),
    }
}

fn hf(name: &str, gpus: u32) -> MemDemand {
    MemDemand {
        need: None,
        summary: format!("{name} no estimate"),
        ..model(name, gpus, 0.0)
    }
}

#[test]
fn enough_gpus_means_whole_gpus_and_no_share() {
    let got = place(
        &[model("a", 1, 10.0), model("b", 1, 10.0)],
        &machine(&[80, 80]),
        0.92,
    )
    .unwrap();
    assert_eq!(got[0].gpus, vec![0]);
    assert_eq!(got[1].gpus, vec![1]);
    assert!(got.iter().all(|p| p.share.is_none() && !p.shared));
}

#[test]
fn three_models_on_two_gpus_share_in_proportion() {
    // 30 + 10 + 20 GiB on two 80 GiB GPUs: largest first, each onto the emptiest GPU.
    let demands = [
        model("a", 1, 30.0),
        model("b", 1, 10.0),
        model("c", 1, 20.0),
    ];
    let got = place(&demands, &machine(&[80, 80]), 0.92).unwrap();
    assert_eq!(got[0].gpus, vec![0]);
    assert_eq!(got[0].share, None, "a is alone on GPU 0");
    assert_eq!(
        (got[1].gpus.clone(), got[2].gpus.clone()),
        (vec![1], vec![1])
    );
    assert!(got[1].shared && got[2].shared);
    // GPU 1: 0.92 × 80 = 73.6 GiB, minus 2 GiB of CUDA context and graphs = 71.6 GiB shared
    // 1:2 between b and c.
    let (b, c) = (got[1].share.unwrap(), got[2].share.unwrap());
    assert!((b - 71.6 / 3.0 / 80.0).abs() < 0.001, "{b}");
    assert!((c - 2.0 * 71.6 / 3.0 / 80.0).abs() < 0.001, "{c}");
    assert!(b + c <= 0.92);
}

#[test]
fn parallel_and_unestimated_models_keep_whole_gpus() {
    let demands = [
        model("small-a", 1, 5.0),
        model("tp", 2, 15.0),
        hf("hub", 1),
        model("small-b", 1, 5.0),
    ];
    let got = place(&demands, &machine(&[24, 24, 24, 24]), 0.92).unwrap();
    assert_eq!(got[1].gpus, vec![0, 1]);
    assert_eq!(got[2].gpus, vec![2]);
    assert_eq!(got[0].gpus, vec![3]);
    assert_eq!(got[3].gpus, vec![3]);
    assert!(got[0].shared && got[3].shared && !got[1].shared && !got[2].shared);
    assert_eq!(got[1].share, None);
}

#[test]
fn an_engine_without_a_fraction_flag_reserves_its_estimate_and_no_more() {
    // llama.cpp (no flag) beside vLLM on one 80 GiB GPU: it keeps its 5 GiB need (rounded
    // up to the share step); vLLM gets the rest of the allowance, not a proportional part.
    let mut gguf = model("gguf", 1, 5.0);
    gguf.fraction_flag = None;
    let got = place(
        &[model("big", 1, 20.0), gguf.clone()],
        &machine(&[80]),
        0.92,
    )
    .unwrap();
    assert!(got[0].shared && got[1].shared);
    assert_eq!(got[1].share, Some(0.063), "ceil(5/80, 0.001)");
    let vllm = got[0].share.unwrap();
    // 0.92 × 80 − 2 × 1 GiB outside − 0.063 × 80: about 0.832, rounded down.
    assert!((0.830..=0.833).contains(&vllm), "{vllm}");
    // Proportional shares would have given vLLM only 4/5 of the allowance.
    assert!(vllm > 0.8 * (0.92 - 2.0 / 80.0) + 0.05, "{vllm}");

    // Alone on its GPU it gets no share (there is no flag to pass it in), and it only has
    // to fit under the limit, not under vLLM's 0.9.
    let got = place(std::slice::from_ref(&gguf), &machine(&[80]), 0.5).unwrap();
    assert_eq!(got[0].share, None);
    let mut huge = model("huge", 1, 75.0);
    huge.fraction_flag = None;
    assert!(place(std::slice::from_ref(&huge), &machine(&[80]), 0.95).is_ok());
    let e = place(&[huge], &machine(&[80]), 0.92)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("huge needs 75.0 GiB per GPU but MODELMUX_GPU_MEMORY_LIMIT 0.92 of GPU 0 allows 73.6 GiB"),
        "{e}"
    );
}

#[test]
fn a_users_own_share_is_kept_and_counted() {
    let mut fixed = model("fixed", 1, 10.0);
    fixed.fixed_share = Some(0.5);
    let demands = [fixed, model("b", 1, 10.0), model("c", 1, 10.0)];
    let got = place(&demands, &machine(&[80, 80]), 0.92).unwrap();
    let on = |g: usize| {
        (0..3)
            .filter(|&i| got[i].gpus == vec![g])
            .collect::<Vec<_>>()
    };
    let shared_gpu = if on(0).len() == 2 { 0 } else { 1 };
    let pair = on(shared_gpu);
    assert_eq!(got[0].share, Some(0.5));
    let total: f64 = pair.iter().map(|&i| got[i].share.unwrap()).sum();
    assert!(total <= 0.92 - 2.0 / 80.0 + 1e-9, "{total}");

    // A fixed share too small for the model is refused before anything starts.
    let mut tight = model("tight", 1, 20.0);
    tight.fixed_share = Some(0.2);
    let e = place(&[tight], &machine(&[80]), 0.92)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tight needs 20.0 GiB per GPU but its own --gpu-memory-utilization 0.2 of GPU 0 allows 16.0 GiB"),
        "{e}"
    );
}

#[test]
fn what_cannot_fit_is_refused_in_one_line_with_every_model_and_gpu() {
    let demands = [
        model("big", 1, 60.0),
        model("mid", 1, 30.0),
        model("small", 1, 10.0),
    ];
    let e = place(&demands, &machine(&[48, 48]), 0.92)
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'));
    assert!(e.starts_with("the models do not fit in GPU memory: big needs 60.0 GiB per GPU but vLLM's utilization 0.9 of GPU 0 allows 43.2 GiB"), "{e}");
    for part in [
        "big 60 GiB",
        "mid 30 GiB",
        "small 10 GiB",
        "GPUs: 0 48.0 GiB, 1 48.0 GiB",
        "MODELMUX_GPU_MEMORY_LIMIT=0.92",
        "-tp N",
        "--max-model-len",
    ] {
        assert!(e.contains(part), "{part}: {e}");
    }
    // Each fits alone, but not together on two GPUs.
    let demands = [
        model("a", 1, 40.0),
        model("b", 1, 40.0),
        model("c", 1, 40.0),
    ];
    let e = place(&demands, &machine(&[48, 48]), 0.92)
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not fit in GPU memory: a, b, c need"), "{e}");
}

#[test]
fn a_limit_below_vllms_default_caps_whole_gpus_too() {
    let got = place(&[model("a", 1, 10.0)], &machine(&[80]), 0.5).unwrap();
    assert_eq!(got[0].share, Some(0.5));
    let got = place(&[model("a", 1, 10.0)], &machine(&[80]), 0.92).unwrap();
    assert_eq!(got[0].share, None);
}

#[test]
fn unknown_sizes_cannot_share_and_say_how_to_fix_it() {
    let mut inv = machine(&[80]);
    inv.gpus[0].memory_total = 0;
    let e = place(&[model("a", 1, 1.0), model("b", 1, 1.0)], &inv, 0.92)
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("serve fewer models; or give GPU sizes in MODELMUX_GPUS (4x80GiB) so that models can share GPUs"), "{e}");
    let e = place(&[hf("a", 1), hf("b", 1)], &machine(&[80]), 0.92)
        .unwrap_err()
        .to_string();
    assert!(e.contains("without a readable model directory"), "{e}");
}

#[test]
fn disabled_gpus_give_nothing() {
    let mut inv = machine(&[]);
    inv.disabled = true;
    let got = place(&[model("a", 2, 1.0)], &inv, 0.92).unwrap();
    assert!(got[0].gpus.is_empty() && got[0].share.is_none());
}

fn demand_strategy() -> impl Strategy<Value = MemDemand> {
    (
        prop::sample::select(vec![1u32, 1, 1, 1, 2]),
        prop::option::weighted(0.85, 1u64..30),
        prop::option::weighted(0.15, 5u32..60),
        0u32..2,
        // One engine in five has no fraction flag (llama.cpp); it has no share of its own.
        prop::bool::weighted(0.2),
    )
        .prop_map(|(gpus, inside, fixed, eager, no_flag)| MemDemand {
            name: "m".into(),
            gpus,
            need: inside.map(|g| Need {
                inside: g * GIB,
                outside: GIB / 2 + u64::from(eager) * GIB / 2,
            }),
            fixed_share: fixed.filter(|_| !no_flag).map(|f| f64::from(f) / 100.0),
            fraction_flag: (!no_flag).then_some("--gpu-memory-utilization"),
            summary: String::new(),
        })
}

proptest! {
    // About one case in fifteen shares a GPU; run enough of them.
    #![proptest_config(ProptestConfig::with_cases(1500))]
    #[test]
    fn plans_respect_every_gpu_and_are_deterministic(
        sizes in prop::collection::vec(prop::sample::select(vec![16u64, 24, 40, 48, 80]), 1..5),
        demands in prop::collection::vec(demand_strategy(), 0..10),
        limit_pct in 50u32..=100,
    ) {
        let inv = machine(&sizes);
        let limit = f64::from(limit_pct) / 100.0;
        let first = place(&demands, &inv, limit);
        prop_assert_eq!(&first, &place(&demands, &inv, limit));
        let needed: u32 = demands.iter().map(|d| d.gpus).sum();
        let placed = match first {
            Ok(p) => p,
            Err(GpuError::Exceeded { .. }) => {
                prop_assert!(needed as usize > sizes.len());
                return Ok(());
            }
            Err(GpuError::DoesNotFit { .. }) => return Ok(()),
            Err(other) => { prop_assert!(false, "unexpected {}", other); unreachable!() }
        };
        let mut tenants: Vec<Vec<usize>> = vec![Vec::new(); sizes.len()];
        for (i, (d, p)) in demands.iter().zip(&placed).enumerate() {
            prop_assert_eq!(p.gpus.len(), d.gpus as usize);
            for &g in &p.gpus { tenants[g].push(i); }
            if let Some(s) = p.share { prop_assert!(s > 0.0 && s <= 1.0); }
            if let Some(u) = d.fixed_share { prop_assert_eq!(p.share, Some(u)); }
        }
        for (g, members) in tenants.iter().enumerate() {
            let size = inv.gpus[g].memory_total as f64;
            if members.len() < 2 {
                if let [i] = members[..] {
                    prop_assert!(!placed[i].shared);
                    if let Some(need) = demands[i].need {
                        let alone = if demands[i].fraction_flag.is_none() {
                            prop_assert_eq!(placed[i].share, None, "no flag, no share alone");
                            limit
                        } else {
                            VLLM_DEFAULT_UTILIZATION
                        };
                        let util = placed[i].share.unwrap_or(alone);
                        prop_assert!(need.inside as f64 <= util * size + 1.0);
                    }
                }
                continue;
            }
            let mut used = 0.0;
            for &i in members {
                let d = &demands[i];
                prop_assert!(d.gpus == 1 && placed[i].shared, "only one-GPU models with an estimate share");
                let need = d.need.expect("sharers have an estimate");
                let share = placed[i].share.expect("sharers have a share");
                prop_assert!(share * size + 1.0 >= need.inside as f64, "a share covers its model");
                used += share * size + need.outside as f64;
            }
            prop_assert!(used <= limit * size + 1.0, "GPU {} over its limit: {} > {}", g, used, limit * size);
        }
    }
}
