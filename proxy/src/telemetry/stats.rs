//! Exact latency percentiles per destination and direction over a sliding window, from HDR
//! histograms. The window is a ring of slots; a slot is cleared when time comes back round to
//! it, so old samples age out without any background task.

use crate::Direction;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

const SLOTS: u64 = 6;
/// Microseconds; anything slower is clamped to ten minutes.
const MAX_MICROS: u64 = 600_000_000;

pub struct SlidingHistogram {
    epoch: Instant,
    slot_len: Duration,
    ring: Mutex<Vec<Slot>>,
}

struct Slot {
    /// Which turn of the ring this slot holds (time since epoch / slot length).
    turn: u64,
    hist: Option<Histogram<u32>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl SlidingHistogram {
    pub fn new(window: Duration) -> Self {
        let slot_len = (window / SLOTS as u32).max(Duration::from_millis(100));
        Self {
            epoch: Instant::now(),
            slot_len,
            ring: Mutex::new(
                (0..SLOTS)
                    .map(|_| Slot {
                        turn: 0,
                        hist: None,
                    })
                    .collect(),
            ),
        }
    }

    fn turn(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.slot_len.as_nanos()) as u64
    }

    pub fn record(&self, latency: Duration) {
        let turn = self.turn(Instant::now());
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut ring[(turn % SLOTS) as usize];
        if slot.turn != turn {
            slot.turn = turn;
            if let Some(h) = slot.hist.as_mut() {
                h.reset();
            }
        }
        let hist = slot.hist.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .unwrap_or_else(|e| panic!("static HDR bounds are valid: {e}"))
        });
        hist.saturating_record(micros);
    }

    /// Percentiles over the slots still inside the window.
    pub fn percentiles(&self) -> Percentiles {
        let now_turn = self.turn(Instant::now());
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let mut merged: Option<Histogram<u32>> = None;
        for slot in ring.iter() {
            let live = slot.turn + SLOTS > now_turn;
            if let (true, Some(h)) = (live, slot.hist.as_ref()) {
                match merged.as_mut() {
                    Some(m) => {
                        let _ = m.add(h);
                    }
                    None => merged = Some(h.clone()),
                }
            }
        }
        let ms = |v: u64| v as f64 / 1000.0;
        match merged {
            Some(h) if !h.is_empty() => Percentiles {
                count: h.len(),
                p50_ms: ms(h.value_at_quantile(0.50)),
                p95_ms: ms(h.value_at_quantile(0.95)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                max_ms: ms(h.max()),
            },
            _ => Percentiles {
                count: 0,
                p50_ms: 0.0,
                p95_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
            },
        }
    }
}

/// Keeps one histogram per (direction, destination) across snapshot changes, so a config
/// reload does not reset `/stats`.
pub struct StatsRegistry {
    window: Duration,
    map: Mutex<HashMap<(Direction, String), Arc<SlidingHistogram>>>,
}

#[derive(Debug, Serialize)]
pub struct StatsRow {
    pub direction: Direction,
    pub destination: String,
    #[serde(flatten)]
    pub percentiles: Percentiles,
}

impl StatsRegistry {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Called when compiling a snapshot, never per request.
    pub fn get(&self, direction: Direction, destination: &str) -> Arc<SlidingHistogram> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry((direction, destination.to_string()))
            .or_insert_with(|| Arc::new(SlidingHistogram::new(self.window)))
            .clone()
    }

    pub fn rows(&self) -> Vec<StatsRow> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<StatsRow> = map
            .iter()
            .map(|((d, name), h)| StatsRow {
                direction: *d,
                destination: name.clone(),
                percentiles: h.percentiles(),
            })
            .collect();
        rows.sort_by(|a, b| {
            (a.direction.as_str(), &a.destination).cmp(&(b.direction.as_str(), &b.destination))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn percentiles_are_exact_and_age_out() {
        let h = SlidingHistogram::new(Duration::from_secs(60));
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p = h.percentiles();
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p95_ms - 95.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < 0.1, "{p:?}");

        tokio::time::advance(Duration::from_secs(30)).await;
        h.record(Duration::from_millis(500));
        assert_eq!(h.percentiles().count, 101);

        // The first samples leave the window; the later one stays.
        tokio::time::advance(Duration::from_secs(35)).await;
        let p = h.percentiles();
        assert_eq!(p.count, 1, "{p:?}");
        assert!((p.max_ms - 500.0).abs() < 1.0);

        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(h.percentiles().count, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn registry_keeps_histograms_across_lookups() {
        let r = StatsRegistry::new(Duration::from_secs(60));
        r.get(Direction::Outbound, "payment")
            .record(Duration::from_millis(3));
        r.get(Direction::Outbound, "payment")
            .record(Duration::from_millis(5));
        let rows = r.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].percentiles.count, 2);
    }
}
