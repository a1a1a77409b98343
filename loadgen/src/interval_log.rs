//! The HdrHistogram interval log (`--hdr-log`): one V2 compressed histogram a
//! second of the measured part of a run, by completion time, in the format of
//! the Java `HistogramLogWriter` (readable by `HistogramLogProcessor`,
//! HdrHistogram's plotting pages and this crate's [`read_interval_log`]).
//!
//! Values are latencies in microseconds from the intended send time; the
//! interval max column is in milliseconds (`MaxValueDivisor` 1000). Interval
//! timestamps are seconds from `BaseTime`, the end of the warmup.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriter, IntervalLogWriterBuilder, LogEntry,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};

use crate::error::LoadgenError;

/// The writer type the runner holds while a run goes on.
pub type IntervalLogWriterOnFile<'a> =
    IntervalLogWriter<'a, 'a, BufWriter<File>, V2DeflateSerializer>;

/// An interval log file being written.
pub struct IntervalLogOutput {
    path: PathBuf,
    file: BufWriter<File>,
    serializer: V2DeflateSerializer,
}

impl IntervalLogOutput {
    /// Creates (truncates) the file now, so an unwritable path fails before the run.
    pub fn create(path: &Path) -> Result<IntervalLogOutput, LoadgenError> {
        let file = File::create(path).map_err(|error| write_error(path, error.to_string()))?;
        Ok(IntervalLogOutput {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            serializer: V2DeflateSerializer::new(),
        })
    }

    /// Writes the headers; `base_time` is the wall-clock time interval timestamps count from.
    pub fn begin(
        &mut self,
        base_time: SystemTime,
        comment: &str,
    ) -> Result<IntervalLogWriterOnFile<'_>, LoadgenError> {
        let path = self.path.clone();
        IntervalLogWriterBuilder::new()
            .add_comment(comment)
            .add_comment("values are latencies in microseconds from the intended send time")
            .with_start_time(base_time)
            .with_base_time(base_time)
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut self.file, &mut self.serializer)
            .map_err(|error| write_error(&path, error.to_string()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the file.
    pub fn finish(mut self) -> Result<(), LoadgenError> {
        self.file
            .flush()
            .map_err(|error| write_error(&self.path, error.to_string()))
    }
}

/// Writes one interval; `start` counts from the log's base time.
pub fn write_interval(
    writer: &mut IntervalLogWriterOnFile<'_>,
    histogram: &Histogram<u64>,
    start: Duration,
    length: Duration,
) -> Result<(), String> {
    writer
        .write_histogram(histogram, start, length, None)
        .map_err(|error| error.to_string())
}

fn write_error(path: &Path, reason: String) -> LoadgenError {
    LoadgenError::WriteOutput {
        what: "hdr interval log",
        path: path.to_path_buf(),
        reason,
    }
}

/// One interval read back from a log.
#[derive(Debug, Clone)]
pub struct LoggedInterval {
    pub start: Duration,
    pub length: Duration,
    pub histogram: Histogram<u64>,
}

/// Reads every interval histogram of an interval log.
pub fn read_interval_log(bytes: &[u8]) -> Result<Vec<LoggedInterval>, String> {
    let mut deserializer = Deserializer::new();
    let mut intervals = Vec::new();
    for entry in IntervalLogIterator::new(bytes) {
        let entry = entry.map_err(|error| format!("interval log does not parse: {error:?}"))?;
        let LogEntry::Interval(interval) = entry else {
            continue;
        };
        let encoded = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .map_err(|error| format!("interval histogram is not base64: {error}"))?;
        let histogram: Histogram<u64> = deserializer
            .deserialize(&mut encoded.as_slice())
            .map_err(|error| format!("interval histogram does not decode: {error:?}"))?;
        intervals.push(LoggedInterval {
            start: interval.start_timestamp(),
            length: interval.duration(),
            histogram,
        });
    }
    Ok(intervals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_round_trip_through_a_file() {
        let path = std::env::temp_dir().join(format!(
            "fanout-loadgen-interval-log-{}.hlog",
            std::process::id()
        ));
        let mut output = IntervalLogOutput::create(&path).unwrap();
        let mut writer = output
            .begin(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                "test",
            )
            .unwrap();
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for second in 0..3u64 {
            histogram.reset();
            for value in 0..=second {
                histogram.record(1000 + value).unwrap();
            }
            write_interval(
                &mut writer,
                &histogram,
                Duration::from_secs(second),
                Duration::from_secs(1),
            )
            .unwrap();
        }
        drop(writer);
        output.finish().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("#[BaseTime: 1700000000.000"), "{text}");
        let intervals = read_interval_log(&bytes).unwrap();
        let counts: Vec<u64> = intervals
            .iter()
            .map(|interval| interval.histogram.len())
            .collect();
        assert_eq!(counts, [1, 2, 3]);
        assert_eq!(intervals[2].start, Duration::from_secs(2));
        assert_eq!(intervals[2].length, Duration::from_secs(1));
    }
}
