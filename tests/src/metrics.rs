//! Scraping a service's `GET /metrics` over a real socket, and reading the
//! Prometheus text format back into samples a test can sum and compare.
//!
//! The request is plain HTTP/1.1 over a `TcpStream` with
//! `Connection: close`: what a scraper sends, with no client library
//! between the test and the bytes the service wrote.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for one scrape.
const SCRAPE_LIMIT: Duration = Duration::from_secs(10);

/// One sample: its name (with `_bucket`, `_sum`, `_count` for histograms),
/// labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape, plus the `# TYPE` of each family.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include every
    /// `(label, value)` of `matching`; 0 when none match.
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.matching(name, matching)
            .map(|sample| sample.value)
            .sum()
    }

    /// How many samples named `name` match.
    pub fn count(&self, name: &str, matching: &[(&str, &str)]) -> usize {
        self.matching(name, matching).count()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        matching: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && matching.iter().all(|(label, value)| {
                    sample.labels.get(*label).map(String::as_str) == Some(*value)
                })
        })
    }
}

/// The root's `fanout_root_replica_calls_total` per replica address of
/// `shard`, scraped from its metrics endpoint `metrics`.
pub async fn replica_calls(metrics: SocketAddr, shard: u32) -> BTreeMap<String, f64> {
    let scraped = scrape(metrics).await.expect("the root's metrics scrape");
    scraped
        .samples
        .iter()
        .filter(|sample| {
            sample.name == "fanout_root_replica_calls_total"
                && sample.labels.get("shard") == Some(&shard.to_string())
        })
        .map(|sample| {
            let replica = sample.labels.get("replica").cloned().unwrap_or_default();
            (replica, sample.value)
        })
        .collect()
}

/// Waits, polling every 250 ms, until `check(before, now)` holds of
/// [`replica_calls`] of `shard`; fails naming `what` after `limit`. Returns
/// how long it took.
pub async fn until_replica_calls(
    metrics: SocketAddr,
    shard: u32,
    limit: std::time::Duration,
    what: &str,
    check: impl Fn(&BTreeMap<String, f64>, &BTreeMap<String, f64>) -> bool,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    let before = replica_calls(metrics, shard).await;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let now = replica_calls(metrics, shard).await;
        if check(&before, &now) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what} within {limit:?}: calls were {before:?}, are {now:?}"
        );
    }
}

/// `GET /metrics` from `addr`: checks the status and content type, parses
/// the body.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let response = crate::within(SCRAPE_LIMIT, "a metrics scrape", get(addr, "/metrics")).await??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the HTTP response has no header end")?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics from {addr}: {status_line}\n{body}");
    }
    let content_type_ok = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("content-type:") && line.contains("text/plain; version=0.0.4")
    });
    if !content_type_ok {
        bail!("GET /metrics from {addr}: not the 0.0.4 text format\n{head}");
    }
    parse(body)
}

/// `GET path` from `addr`, the raw response (head and body).
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to the metrics endpoint {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// Parses the text exposition format: `# TYPE` lines, and samples with
/// optional labels whose values may hold `\\`, `\"` and `\n` escapes.
pub fn parse(text: &str) -> anyhow::Result<Scrape> {
    let mut scrape = Scrape::default();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE")
                && let (Some(name), Some(kind)) = (words.next(), words.next())
            {
                scrape.types.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        let sample =
            parse_sample(line).with_context(|| format!("line {}: {line:?}", number + 1))?;
        scrape.samples.push(sample);
    }
    Ok(scrape)
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line.find(['{', ' ']).context("no value")?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut characters = after_brace.char_indices().peekable();
        let consumed;
        loop {
            // label name
            let mut label = String::new();
            for (_, character) in characters.by_ref() {
                if character == '=' {
                    break;
                }
                label.push(character);
            }
            if characters.next().map(|(_, character)| character) != Some('"') {
                bail!("label {label:?} has no quoted value");
            }
            let mut value = String::new();
            loop {
                match characters.next() {
                    Some((_, '\\')) => match characters.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => bail!("unfinished escape"),
                    },
                    Some((_, '"')) => break,
                    Some((_, other)) => value.push(other),
                    None => bail!("unterminated label value"),
                }
            }
            labels.insert(label.trim().to_owned(), value);
            match characters.next() {
                Some((_, ',')) => continue,
                Some((index, '}')) => {
                    consumed = index + 1;
                    break;
                }
                other => bail!("expected , or }} after a label, got {other:?}"),
            }
        }
        rest = &after_brace[consumed..];
    }
    let value_text = rest.split_whitespace().next().context("no value")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other
            .parse()
            .with_context(|| format!("bad value {other:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_special_values() {
        let text = "\
# HELP demo_total x
# TYPE demo_total counter
demo_total{a=\"1\",path=\"C:\\\\x \\\"q\\\"\\n,}\"} 3
demo_total{a=\"2\"} 4
demo_seconds_bucket{le=\"+Inf\"} 5
demo_gauge -Inf
";
        let scrape = parse(text).unwrap();
        assert_eq!(scrape.samples.len(), 4);
        assert_eq!(scrape.types["demo_total"], "counter");
        assert_eq!(scrape.samples[0].labels["path"], "C:\\x \"q\"\n,}");
        assert_eq!(scrape.sum("demo_total", &[]), 7.0);
        assert_eq!(scrape.sum("demo_total", &[("a", "2")]), 4.0);
        assert_eq!(scrape.count("demo_seconds_bucket", &[("le", "+Inf")]), 1);
        assert_eq!(scrape.samples[3].value, f64::NEG_INFINITY);
        assert!(parse("demo_total{a=\"1\" 3").is_err());
    }
}
