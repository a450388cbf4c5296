//! A Prometheus text-format parser just big enough for assertions.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format; lines that do not parse are skipped (comments, garbage).
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The first matching sample's value.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels).next().map(|s| s.value)
    }

    /// The sum over matching samples; 0 when none match (a counter not yet created).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Metric names present (for error messages).
    pub fn names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self.samples.iter().map(|s| s.name.as_str()).collect();
        n.dedup();
        n
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let (labels, used) = parse_labels(&line[i + 1..])?;
            (&line[..i], labels, &line[i + 1 + used..])
        }
        Some(i) => (&line[..i], BTreeMap::new(), &line[i..]),
        None => return None,
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",...}`; returns the labels and the bytes consumed including `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, usize)> {
    let mut labels = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b',' || b[i] == b' ') {
            i += 1;
        }
        if *b.get(i)? == b'}' {
            return Some((labels, i + 1));
        }
        let eq = i + s[i..].find('=')?;
        let key = s[i..eq].trim().to_string();
        i = eq + 1;
        if *b.get(i)? != b'"' {
            return None;
        }
        i += 1;
        let mut val = String::new();
        loop {
            match *b.get(i)? {
                b'"' => break,
                b'\\' => {
                    i += 1;
                    val.push(match *b.get(i)? {
                        b'n' => '\n',
                        c => c as char,
                    });
                }
                _ => {
                    let ch = s[i..].chars().next()?;
                    val.push(ch);
                    i += ch.len_utf8() - 1;
                }
            }
            i += 1;
        }
        i += 1;
        labels.insert(key, val);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_finds_by_label_subset() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE istio_tcp_connections_opened_total counter\n\
             istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"client-a\",x=\"a\\\"b,}\"} 3\n\
             istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"client-b\"} 4 1700000000\n\
             sluice_ebpf_captured_total 7\n\
             up{} +Inf\n",
        );
        assert_eq!(m.samples.len(), 4);
        assert_eq!(
            m.get(
                "istio_tcp_connections_opened_total",
                &[("source_workload", "client-a")]
            ),
            Some(3.0)
        );
        assert_eq!(m.samples[0].labels["x"], "a\"b,}");
        assert_eq!(
            m.sum(
                "istio_tcp_connections_opened_total",
                &[("reporter", "source")]
            ),
            7.0
        );
        assert_eq!(m.get("sluice_ebpf_captured_total", &[]), Some(7.0));
        assert_eq!(m.get("up", &[]), Some(f64::INFINITY));
        assert_eq!(m.sum("missing", &[]), 0.0);
    }
}
