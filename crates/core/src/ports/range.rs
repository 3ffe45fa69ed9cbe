//! Host port ranges: the `--port-range` flag and its validation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An inclusive range of host ports the operator may hand out, e.g. `7000-7999`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// First port of the range.
    pub min: u16,
    /// Last port of the range (inclusive).
    pub max: u16,
}

impl PortRange {
    /// Builds a range, checking `1 <= min <= max`.
    pub fn new(min: u16, max: u16) -> Result<Self, RangeError> {
        if min == 0 {
            return Err(RangeError::ZeroPort { range: format!("{min}-{max}") });
        }
        if min > max {
            return Err(RangeError::Reversed { min, max });
        }
        Ok(Self { min, max })
    }

    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    /// Whether the range holds no port; only a hand-built `min > max` range does, `new` rejects it.
    pub fn is_empty(&self) -> bool {
        self.max < self.min
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    fn overlaps(&self, other: &PortRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max { write!(f, "{}", self.min) } else { write!(f, "{}-{}", self.min, self.max) }
    }
}

impl FromStr for PortRange {
    type Err = RangeError;

    /// Parses `MIN-MAX` or a single port `PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let parse = |p: &str| p.trim().parse::<u16>().map_err(|_| RangeError::Syntax { input: s.to_owned() });
        match s.split_once('-') {
            Some((min, max)) => PortRange::new(parse(min)?, parse(max)?),
            None => {
                let port = parse(s)?;
                PortRange::new(port, port)
            }
        }
    }
}

/// A validated set of port ranges: each non-empty, none overlapping, sorted by `min`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<PortRange>", into = "Vec<PortRange>")]
pub struct PortRanges(Vec<PortRange>);

impl PortRanges {
    /// Validates and sorts `ranges`; overlapping ranges are an error, not merged, because they
    /// usually mean a typo in the flag.
    pub fn new(mut ranges: Vec<PortRange>) -> Result<Self, RangeError> {
        for r in &ranges {
            PortRange::new(r.min, r.max)?;
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            if pair[0].overlaps(&pair[1]) {
                return Err(RangeError::Overlap { first: pair[0], second: pair[1] });
            }
        }
        Ok(Self(ranges))
    }

    /// The ranges, sorted by `min`.
    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    /// Total number of ports over all ranges.
    pub fn port_count(&self) -> u32 {
        self.0.iter().map(PortRange::len).sum()
    }

    /// Whether no range is configured (only Static and None policies can then be served).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Index of the range holding `port`, if any.
    pub fn range_of(&self, port: u16) -> Option<usize> {
        // Ranges are sorted and disjoint, so the candidate is the last one starting at or below `port`.
        let i = self.0.partition_point(|r| r.min <= port).checked_sub(1)?;
        self.0[i].contains(port).then_some(i)
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(no port range)");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for PortRanges {
    type Err = RangeError;

    /// Parses the `--port-range` syntax: comma-separated `MIN-MAX` or `PORT` items,
    /// e.g. `7000-7999,9000-9100`. An empty string means no range.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let ranges = s.split(',').map(str::parse).collect::<Result<Vec<_>, _>>()?;
        Self::new(ranges)
    }
}

impl TryFrom<Vec<PortRange>> for PortRanges {
    type Error = RangeError;

    fn try_from(ranges: Vec<PortRange>) -> Result<Self, Self::Error> {
        Self::new(ranges)
    }
}

impl From<PortRanges> for Vec<PortRange> {
    fn from(ranges: PortRanges) -> Self {
        ranges.0
    }
}

/// Parses a `--port-range` value such as `7000-7999,9000-9100`.
pub fn parse_port_ranges(s: &str) -> Result<PortRanges, RangeError> {
    s.parse()
}

/// A `--port-range` value that can't be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not of the form `MIN-MAX` or `PORT` with numbers 1-65535.
    #[error(
        "invalid port range {input:?}: expected MIN-MAX or PORT with ports 1-65535, \
         comma-separated, e.g. --port-range 7000-7999,9000-9100"
    )]
    Syntax {
        /// The offending item.
        input: String,
    },
    /// Port 0 can't be a host port.
    #[error("invalid port range {range}: port 0 can't be a host port; start the range at 1 or above")]
    ZeroPort {
        /// The offending range.
        range: String,
    },
    /// `min` is above `max`.
    #[error("invalid port range {min}-{max}: the first port is above the last; write it as {max}-{min}")]
    Reversed {
        /// Given first port.
        min: u16,
        /// Given last port.
        max: u16,
    },
    /// Two ranges share ports.
    #[error("port ranges {first} and {second} overlap; list each port in one range only")]
    Overlap {
        /// The lower range.
        first: PortRange,
        /// The range overlapping it.
        second: PortRange,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flag_syntax() {
        let r: PortRanges = " 9000-9100, 7000-7999 ,8080".parse().unwrap();
        assert_eq!(
            r.ranges(),
            &[
                PortRange { min: 7000, max: 7999 },
                PortRange { min: 8080, max: 8080 },
                PortRange { min: 9000, max: 9100 },
            ]
        );
        assert_eq!(r.port_count(), 1000 + 1 + 101);
        assert_eq!(r.to_string(), "7000-7999,8080,9000-9100");
        assert!(parse_port_ranges("").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_input_with_actionable_messages() {
        let e = parse_port_ranges("7000-6000").unwrap_err();
        assert_eq!(e, RangeError::Reversed { min: 7000, max: 6000 });
        assert!(e.to_string().contains("write it as 6000-7000"));

        let e = parse_port_ranges("7000-7999,7500-8000").unwrap_err();
        assert!(e.to_string().contains("7000-7999 and 7500-8000 overlap"), "{e}");

        for bad in ["7000-", "abc", "7000-70000", "1-2-3", ","] {
            let e = parse_port_ranges(bad).unwrap_err();
            assert!(matches!(e, RangeError::Syntax { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("--port-range 7000-7999"), "{e}");
        }
        assert!(matches!(parse_port_ranges("0-10"), Err(RangeError::ZeroPort { .. })));
    }

    #[test]
    fn finds_the_range_of_a_port() {
        let r: PortRanges = "7000-7999,9000-9100".parse().unwrap();
        assert_eq!(r.range_of(6999), None);
        assert_eq!(r.range_of(7000), Some(0));
        assert_eq!(r.range_of(7999), Some(0));
        assert_eq!(r.range_of(8500), None);
        assert_eq!(r.range_of(9100), Some(1));
        assert_eq!(r.range_of(65535), None);
    }

    #[test]
    fn serde_validates() {
        let ok: PortRanges = serde_json::from_str(r#"[{"min":7000,"max":7010}]"#).unwrap();
        assert_eq!(ok.port_count(), 11);
        let err = serde_json::from_str::<PortRanges>(r#"[{"min":7000,"max":7010},{"min":7005,"max":7020}]"#);
        assert!(err.unwrap_err().to_string().contains("overlap"));
    }
}
