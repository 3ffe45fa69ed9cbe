//! Verdicts for benchmarks that repeat a measurement: median, min and max of each side, the
//! spread (max/min), and how far a pooled ratio can be trusted, so one lucky round does not
//! read as a regression or a win. The same rules as `scripts/lib/stats.py`.
#![allow(dead_code)] // each bench uses a different subset

/// Over this max/min a side's rounds are too spread to trust one ratio from them.
pub const WIDE: f64 = 1.3;

/// Median, min and max of repeated measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// How many.
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Some(Summary { n: v.len(), median, min: v[0], max: v[v.len() - 1] })
    }

    /// max/min (1 when all are equal, infinite when the least is 0 and others are not).
    pub fn spread(&self) -> f64 {
        if self.min > 0.0 {
            self.max / self.min
        } else if self.max == self.min {
            1.0
        } else {
            f64::INFINITY
        }
    }

    /// Whether the spread is over [`WIDE`].
    pub fn wide(&self) -> bool {
        self.spread() > WIDE
    }

    /// `median 1.23 (min 1.10, max 1.40, max/min 1.27)`, with `WIDE` when it is.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "median {:.d$} (min {:.d$}, max {:.d$}, max/min {:.2}){}",
            self.median,
            self.min,
            self.max,
            self.spread(),
            if self.wide() { " WIDE" } else { "" },
            d = decimals
        )
    }
}

/// The mean of `values` and the half-width of its 95% confidence interval (Student's t), or
/// `None` for fewer than two values.
pub fn mean_ci95(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    Some((mean, t95(n - 1) * (var / n as f64).sqrt()))
}

/// How many values with the spread of `values` it takes for the 95% interval of their mean to
/// be within `half_width`.
pub fn needed_for(values: &[f64], half_width: f64) -> Option<usize> {
    let (_, hw) = mean_ci95(values)?;
    let n = values.len() as f64;
    let sd = hw / t95(values.len() - 1) * n.sqrt();
    // A few rounds more than the normal approximation, since t is wider for small counts.
    let mut need = ((1.96 * sd / half_width).powi(2)).ceil() as usize;
    while need > 1 && t95(need - 1) * sd / (need as f64).sqrt() > half_width {
        need += 1;
    }
    Some(need.max(2))
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom.
fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= T.len() => T[d - 1],
        _ => 1.96,
    }
}
