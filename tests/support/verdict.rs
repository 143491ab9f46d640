//! Whether a fault-table figure meets its expected column, where that column says so plainly:
//! a number, optionally after a comparison (`<`, `<=`, `>`, `>=`, `≤`, `≥`) and before a unit
//! (`s`, `ms`, `%`, `MiB`), or a range `A .. B`; parts joined by ` / ` are checked part by part.
//! Anything else (prose) is left to the test's own assertions: "unchecked", never a guess.

/// A row's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The figure meets the expected column.
    Met,
    /// It does not: flagged in the fault table.
    Missed,
    /// The expected column is prose; the test's assertions judge.
    Unchecked,
}

impl Verdict {
    /// How the fault table shows it.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Met => "ok",
            Verdict::Missed => "MISSED",
            Verdict::Unchecked => "-",
        }
    }
}

/// The verdict on `value` against `expected`.
pub fn verdict(value: &str, expected: &str) -> Verdict {
    if value.trim() == expected.trim() {
        return Verdict::Met;
    }
    let (values, wanted): (Vec<&str>, Vec<&str>) = (
        value.split(" / ").collect(),
        expected.split(" / ").collect(),
    );
    if values.len() != wanted.len() {
        return Verdict::Unchecked;
    }
    let mut result = Verdict::Met;
    for (v, w) in values.iter().zip(&wanted) {
        match part(v, w) {
            Verdict::Missed => return Verdict::Missed,
            Verdict::Unchecked => result = Verdict::Unchecked,
            Verdict::Met => {}
        }
    }
    result
}

/// One part of [`verdict`].
fn part(value: &str, expected: &str) -> Verdict {
    if value.trim() == expected.trim() {
        return Verdict::Met;
    }
    let Some(want) = Wanted::parse(expected) else {
        return Verdict::Unchecked;
    };
    let Some((got, got_unit)) = number(value.trim()).map(|(n, rest)| (n, unit(rest).0)) else {
        return Verdict::Unchecked;
    };
    let scale = |n: f64, from: Option<&str>, to: Option<&str>| match (from, to) {
        (Some("ms"), Some("s")) => Some(n / 1000.0),
        (Some("s"), Some("ms")) => Some(n * 1000.0),
        (a, b) if a == b || a.is_none() || b.is_none() => Some(n),
        _ => None,
    };
    let Some(got) = scale(got, got_unit, want.unit) else {
        return Verdict::Unchecked;
    };
    let met = match want.comparison {
        "<" => got < want.low,
        "<=" | "≤" => got <= want.low,
        ">" => got > want.low,
        ">=" | "≥" => got >= want.low,
        _ => match want.high {
            Some(high) => (want.low..=high).contains(&got),
            None => got == want.low,
        },
    };
    if met { Verdict::Met } else { Verdict::Missed }
}

/// A plainly stated expectation.
struct Wanted {
    comparison: &'static str,
    low: f64,
    /// The top of a range `low .. high`.
    high: Option<f64>,
    unit: Option<&'static str>,
}

impl Wanted {
    fn parse(text: &str) -> Option<Wanted> {
        let text = text.trim();
        let (comparison, rest) = ["<=", ">=", "≤", "≥", "<", ">"]
            .into_iter()
            .find_map(|c| text.strip_prefix(c).map(|r| (c, r)))
            .unwrap_or(("=", text));
        let (low, rest) = number(rest.trim_start())?;
        let (mut unit, mut rest) = unit(rest);
        let mut high = None;
        if comparison == "="
            && unit.is_none()
            && let Some(r) = rest.trim_start().strip_prefix("..")
        {
            let (h, r) = number(r.trim_start())?;
            let (u, r) = self::unit(r);
            (high, unit, rest) = (Some(h), u, r);
        }
        // What follows is a comment in parentheses or after a comma, or nothing. A second
        // bound after a comma is not a comment: the row is then left to the test.
        let rest = rest.trim_start();
        let comment = rest.starts_with('(')
            || rest
                .strip_prefix(',')
                .is_some_and(|c| !c.trim_start().starts_with(['<', '>', '≤', '≥']));
        if !(rest.is_empty() || comment) {
            return None;
        }
        Some(Wanted {
            comparison,
            low,
            high,
            unit,
        })
    }
}

/// The number `text` starts with, and what follows it.
fn number(text: &str) -> Option<(f64, &str)> {
    let end = text
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(text.len(), |(i, _)| i);
    let digits = text[..end].trim_end_matches('.');
    let n = digits.parse().ok()?;
    Some((n, &text[digits.len()..]))
}

/// The unit `text` starts with (after spaces), if it is one, and what follows it.
fn unit(text: &str) -> (Option<&'static str>, &str) {
    let trimmed = text.trim_start();
    for u in ["ms", "s", "%", "MiB"] {
        if let Some(rest) = trimmed.strip_prefix(u)
            && rest.chars().next().is_none_or(|c| !c.is_alphanumeric())
        {
            return (Some(u), rest);
        }
    }
    (None, text)
}

/// The grammar, on rows the fault table holds.
pub fn self_check() {
    use Verdict::*;
    for (value, expected, want) in [
        ("0", "0", Met),
        ("18", "0", Missed),
        ("0 of 6", "0", Met),
        ("0 / 0 / 0", "0 / 0 / 0", Met),
        ("0 / 1 / 0", "0 / 0 / 0", Missed),
        ("10.1 s", "< 8 s (session_timeout + 1 interval)", Missed),
        ("7.9 s", "< 8 s (session_timeout + 1 interval)", Met),
        ("2222 ms", "< 30 s (request_timeout 2 s)", Met),
        ("29 MiB in 99 s", "< 100 MiB, < 5 s", Unchecked),
        ("65 ms", "< 10 s, says `metadata server unreachable`", Met),
        ("0 / 0.9 s", "0 / < 5 s", Met),
        ("1 / 5.050", "1 / 5 .. 9.5", Met),
        ("1 / 4.2", "1 / 5 .. 9.5", Missed),
        ("3 / 3", "3 / >=3", Met),
        ("30 / 0", ">= 10 / 0", Met),
        ("1 / 1 / 6", "<= 1 / <= 1 / >= 6", Met),
        ("3", "≤ 3", Met),
        ("9089", "< 1000000 (Kafka's default message.max.bytes)", Met),
        ("464", "< 1024", Met),
        ("2000", "< 1024", Missed),
        ("1 runs, 10.0 s", "1 run, < 20 s", Unchecked),
        ("40 s vs 20 s", ">= 1.5 x", Unchecked),
        ("2.0", "<= shutdown_timeout 4 s + 2 s", Unchecked),
        ("0", "1 for Harbor (tag names), else 0", Unchecked),
        ("retried next cycle", "an error", Unchecked),
        ("5.00/s over 27 requests", "<= 5", Met),
    ] {
        assert_eq!(
            verdict(value, expected),
            want,
            "{value:?} against {expected:?}"
        );
    }
}
