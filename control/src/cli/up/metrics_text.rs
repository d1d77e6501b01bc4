//! Just enough Prometheus text parsing to sum a counter over the series that carry some
//! labels: what the live table needs from the sidecars' `/metrics`.

/// Sum of `name` over all series whose labels include every `(key, value)` given.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = split_series(series);
            if n != name {
                return None;
            }
            let has = |k: &str, v: &str| {
                rest.contains(&format!("{{{k}=\"{v}\"")) || rest.contains(&format!(",{k}=\"{v}\""))
            };
            labels
                .iter()
                .all(|(k, v)| has(k, v))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Like [`sum`], split by the value of `by` (e.g. requests by `dst_version`).
pub fn sum_by(text: &str, name: &str, labels: &[(&str, &str)], by: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = split_series(series);
        if n != name {
            continue;
        }
        let has = |k: &str, v: &str| {
            rest.contains(&format!("{{{k}=\"{v}\"")) || rest.contains(&format!(",{k}=\"{v}\""))
        };
        if !labels.iter().all(|(k, v)| has(k, v)) {
            continue;
        }
        let Some(key) = label(rest, by) else { continue };
        let v: f64 = value.parse().unwrap_or(0.0);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, total)) => *total += v,
            None => out.push((key, v)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The metric name and the label block, the block keeping its `{` so every label, the first
/// included, can be matched as `{key="` or `,key="`.
fn split_series(series: &str) -> (&str, &str) {
    match series.find('{') {
        Some(i) => (&series[..i], &series[i..]),
        None => (series, ""),
    }
}

fn label(rest: &str, key: &str) -> Option<String> {
    let start = [format!("{{{key}=\""), format!(",{key}=\"")]
        .iter()
        .find_map(|p| rest.find(p.as_str()).map(|i| i + p.len()))?;
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x\n\
        outrigger_requests_total{direction=\"outbound\",dst_service=\"payment\",dst_version=\"v1\",status_code=\"200\"} 90\n\
        outrigger_requests_total{direction=\"outbound\",dst_service=\"payment\",dst_version=\"v2\",status_code=\"200\"} 8\n\
        outrigger_requests_total{direction=\"outbound\",dst_service=\"payment\",dst_version=\"v2\",status_code=\"503\"} 2\n\
        outrigger_requests_total{direction=\"outbound\",dst_service=\"user\",dst_version=\"v1\",status_code=\"200\"} 5\n";

    #[test]
    fn sums_and_splits() {
        assert_eq!(
            sum(
                TEXT,
                "outrigger_requests_total",
                &[("dst_service", "payment")]
            ),
            100.0
        );
        assert_eq!(
            sum(TEXT, "outrigger_requests_total", &[("service", "payment")]),
            0.0
        );
        let by = sum_by(
            TEXT,
            "outrigger_requests_total",
            &[("dst_service", "payment")],
            "dst_version",
        );
        assert_eq!(by, vec![("v1".to_string(), 90.0), ("v2".to_string(), 10.0)]);
    }
}
