//! Tells the tests which of sis's kernels the build host can run, so that a kernel test the host cannot
//! run is reported as ignored (`#[cfg_attr(not(sis_host_avx512bf16), ignore = "...")]`) instead of
//! passing without testing anything.
//!
//! The build host is the test machine when tests are built where they run. A test binary carried to a
//! CPU that lacks what the build host had fails (it never passes silently): rebuild it there.

/// The cfg each feature set sets; the sets are those of the tokens in `src/engines/kernels/mod.rs`.
const SETS: [(&str, &[&str]); 4] = [
    ("sis_host_avx2", &["avx2", "fma", "f16c"]),
    ("sis_host_avx512", &["avx512f", "avx512bw", "avx512dq", "avx512vl", "fma"]),
    ("sis_host_avx512bf16", &["avx512f", "avx512bf16"]),
    ("sis_host_avx512vnni", &["avx512f", "avx512bw", "avx512vnni", "f16c"]),
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    for (cfg, _) in SETS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    // Only a native build runs its tests here.
    let native = std::env::var("TARGET").ok() == std::env::var("HOST").ok();
    if !native {
        return;
    }
    for (cfg, features) in SETS {
        if features.iter().all(|f| host_has(f)) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}

/// Whether the CPU this script runs on has an x86 feature.
#[cfg(target_arch = "x86_64")]
fn host_has(feature: &str) -> bool {
    use std::arch::is_x86_feature_detected as has;
    match feature {
        "avx2" => has!("avx2"),
        "fma" => has!("fma"),
        "f16c" => has!("f16c"),
        "avx512f" => has!("avx512f"),
        "avx512bw" => has!("avx512bw"),
        "avx512dq" => has!("avx512dq"),
        "avx512vl" => has!("avx512vl"),
        "avx512bf16" => has!("avx512bf16"),
        "avx512vnni" => has!("avx512vnni"),
        other => panic!("build.rs does not know the feature {other:?}"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn host_has(_: &str) -> bool {
    false
}
