//! `rekey fleet-bench` as an operator runs it: a scratch database of its
//! own, every measurement verified, the figures in `--json`, the chart
//! written, and the scratch database gone afterwards. The figures
//! themselves are measured, not asserted (the machines are shared).

use rekey_testkit::*;

/// The scratch database fleet-bench named on stderr.
fn scratch_name(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("fleet-bench: scratch database "))
        .unwrap_or_else(|| panic!("fleet-bench named no scratch database: {stderr}"))
        .trim()
        .to_string()
}

/// The text of every `<text>` element of an SVG, trimmed and unescaped.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..t.find("</text>")?];
            Some(
                body.trim()
                    .replace("&apos;", "'")
                    .replace("&quot;", "\"")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&"),
            )
        })
        .collect()
}

#[tokio::test]
async fn fleet_bench_measures_verifies_charts_and_drops_its_scratch_database() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("planning.svg");
    let out = rekey(
        &admin_url(),
        &[
            "fleet-bench",
            "--rows",
            "1500",
            "--batch-size",
            "200",
            "--workers",
            "1,2",
            "--naive-sample",
            "50",
            "--provision-tenants",
            "4",
            "--provision-concurrency",
            "2",
            "--cloud-latency-ms",
            "2",
            "--neon-rps",
            "7",
            "--db-rtt-ms",
            "4",
            "--chart",
            path_str(&chart),
            "--json",
        ],
    );
    assert_exit(&out, 0, "fleet-bench");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let scratch = scratch_name(&stderr);
    assert!(
        !database_exists(&scratch).await,
        "scratch database {scratch} was left behind"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("fleet-bench --json prints one JSON object");
    assert_eq!(report["rows"], 1500);
    let figures = report["in_place"].as_array().expect("in_place figures");
    assert_eq!(
        figures
            .iter()
            .map(|f| f["workers"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    for f in figures {
        assert_eq!(f["rows"], 1500, "every row walked: {f}");
        assert_eq!(
            f["verified"], true,
            "every row opens under the new key: {f}"
        );
        assert!(f["rows_per_sec"].as_f64().unwrap() > 0.0, "{f}");
        // Each row's new version at least: two sealed URLs and the tuple.
        assert!(f["wal_bytes_per_row"].as_f64().unwrap() > 100.0, "{f}");
        assert!(f["phase_secs"]["write"].as_f64().unwrap() > 0.0, "{f}");
    }
    let best = figures
        .iter()
        .map(|f| f["rows_per_sec"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(report["rows_per_sec"].as_f64().unwrap(), best);
    let naive = report["naive_rows_per_sec"].as_f64().unwrap();
    assert!(naive > 0.0);
    let speedup = report["speedup_over_naive"].as_f64().unwrap();
    assert!((speedup - best / naive).abs() < 1e-6 * speedup.max(1.0));
    // The server's floor: every row rewritten once by one UPDATE, the
    // engine's best rate quoted against it.
    let floor = &report["floor"];
    assert_eq!(floor["rows"], 1500, "the floor rewrote every row: {floor}");
    assert_eq!(floor["connections"], 2, "{floor}");
    let floor_rate = floor["rows_per_sec"].as_f64().unwrap();
    assert!(floor_rate > 0.0, "{floor}");
    let over_floor = report["in_place_over_floor"].as_f64().unwrap();
    assert!((over_floor - best / floor_rate).abs() < 1e-6 * over_floor.max(1.0));
    // Across the delaying proxy: the fixed and the auto configuration,
    // each rotating and verifying the whole fleet, quoted against loopback.
    let across = report["across_network"].as_array().expect("across_network");
    assert_eq!(across.len(), 1, "one figure per --db-rtt-ms: {across:?}");
    let at = &across[0];
    assert_eq!(at["rtt_ms"], 4);
    assert!(
        at["tuning"]["rtt_ms"].as_f64().unwrap() >= 4.0,
        "the proxy delays: {at}"
    );
    for f in [&at["fixed"], &at["auto"]] {
        assert_eq!(f["rows"], 1500, "{at}");
        assert_eq!(f["verified"], true, "{at}");
    }
    let auto_ratio = at["auto_over_loopback"].as_f64().unwrap();
    let auto_rate = at["auto"]["rows_per_sec"].as_f64().unwrap();
    assert!((auto_ratio - auto_rate / best).abs() < 1e-6 * auto_ratio.max(1.0));
    assert!(
        report["peak_rss_bytes"].as_u64().unwrap() > 1 << 20,
        "VmHWM read"
    );
    let provision = &report["reprovision"];
    assert_eq!(provision["done"], 4, "{provision}");
    let calls = provision["calls_per_tenant"].as_f64().unwrap();
    assert!(calls >= 10.0, "{provision}");
    let neon_calls = provision["neon_calls_per_tenant"].as_f64().unwrap();
    let fly_calls = provision["fly_calls_per_tenant"].as_f64().unwrap();
    assert!(neon_calls > 0.0 && fly_calls > 0.0, "{provision}");
    assert!((neon_calls + fly_calls - calls).abs() < 1e-9, "{provision}");
    // The projection at a real run's pacing: --neon-rps as given, Fly at
    // run's default, whichever of the two (or the measured rate) is lowest.
    let limits = &provision["at_api_limits"];
    assert_eq!(limits["neon_rps"], 7, "{limits}");
    assert_eq!(limits["fly_rps"], 20, "{limits}");
    let measured = provision["tenants_per_sec"].as_f64().unwrap();
    let candidates = [
        (measured, "latency"),
        (7.0 / neon_calls, "neon"),
        (20.0 / fly_calls, "fly"),
    ];
    let (rate, binding) = candidates
        .into_iter()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    let at_limits = limits["tenants_per_sec"].as_f64().unwrap();
    assert!((at_limits - rate).abs() < 1e-9 * rate, "{limits}");
    assert_eq!(limits["binding"], binding, "{limits}");
    let million = limits["projection"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == 1_000_000)
        .expect("the projection covers a million tenants");
    assert!((million[1].as_f64().unwrap() - 1e6 / rate).abs() < 1e-6 * (1e6 / rate));
    // When and on what: the date, the CPUs and the server's version.
    let on = &report["measured_on"];
    let date = on["date"].as_str().unwrap();
    assert!(
        date.len() == 20 && date.ends_with('Z') && date.as_bytes()[10] == b'T',
        "RFC 3339 UTC to the second: {on}"
    );
    assert!(on["cpus"].as_u64().unwrap() >= 1, "{on}");
    let server_version = on["server_version"].as_str().unwrap();
    assert!(
        server_version.starts_with(|c: char| c.is_ascii_digit()),
        "{on}"
    );

    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    assert!(
        svg.contains("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(200)]
    );
    assert!(
        svg.contains("server floor"),
        "the floor is drawn as the reference"
    );
    // Durations, not raw seconds, with guide lines an outage is planned by;
    // the projections reach past a day (a million tenants at 7 Neon req/s).
    let texts = svg_texts(&svg);
    for guide in ["1 min", "10 min", "1 h", "1 day"] {
        assert!(
            texts.iter().any(|t| t == guide),
            "no {guide} guide line on the y axis: {texts:?}"
        );
    }
    assert!(
        texts
            .iter()
            .any(|t| t == "re-provision at the APIs' pacing (Neon 7 req/s, Fly 20 req/s)"),
        "the re-provision line at the pacing a real run uses: {texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with(&format!("Measured {date} on ")) && t.contains(server_version)),
        "the footer says when and on what: {texts:?}"
    );
    // Colours told apart without red against green: the Okabe-Ito palette.
    for (colour, name) in [("#FF0000", "red"), ("#00FF00", "green")] {
        assert!(!svg.contains(colour), "{name} on the chart");
    }
    for okabe_ito in ["#0072B2", "#D55E00", "#CC79A7"] {
        assert!(svg.contains(okabe_ito), "{okabe_ito} missing");
    }
}

#[tokio::test]
async fn fleet_bench_refuses_an_unreachable_server_with_exit_2() {
    let out = rekey(
        "postgres://postgres@127.0.0.1:1/postgres",
        &["fleet-bench", "--rows", "10"],
    );
    assert_exit(&out, 2, "fleet-bench against a closed port");
    let all = text(&out);
    assert!(all.contains("127.0.0.1:1"), "names the server: {all}");
    assert!(!all.contains("panicked"), "{all}");
}

/// `--quiet` holds back the progress lines; the report still comes.
#[tokio::test]
async fn fleet_bench_quiet_prints_only_the_report() {
    let out = rekey(
        &admin_url(),
        &words(
            "fleet-bench --quiet --rows 300 --batch-size 100 --workers 1 --naive-sample 10 \
             --provision-tenants 0",
        ),
    );
    assert_exit(&out, 0, "fleet-bench --quiet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("fleet-bench:"),
        "progress under --quiet: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("fleet-bench: 300 rows"), "{stdout}");
}
