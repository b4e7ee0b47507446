//! What a failed pod said last: its log, else its events.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, LogParams};
use kube::Api;

use super::super::backend::within;

/// How many log lines (or events) a readiness failure shows.
pub(crate) const FAILURE_LINES: usize = 50;

/// What a failed pod said last: its last [`FAILURE_LINES`] log lines (of
/// the current container, else the previous one), else its events.
pub(crate) async fn last_words(pods: &Api<Pod>, events: &Api<Event>, name: &str) -> Vec<String> {
    for previous in [false, true] {
        let params = LogParams {
            container: Some(name.to_owned()),
            tail_lines: Some(FAILURE_LINES as i64),
            previous,
            ..LogParams::default()
        };
        if let Ok(text) = within(pods.logs(name, &params)).await {
            let lines = tail(&text, FAILURE_LINES);
            if !lines.is_empty() {
                return lines;
            }
        }
    }
    pod_events(events, name).await
}

/// The last `n` lines of `text`, without line ends.
fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<String> = text.lines().map(|l| l.trim_end().to_owned()).collect();
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip).collect()
}

/// `event Warning Failed: Failed to pull image ...`, oldest first.
pub(super) async fn pod_events(events: &Api<Event>, pod: &str) -> Vec<String> {
    let params = ListParams::default().fields(&format!("involvedObject.name={pod}"));
    let Ok(list) = within(events.list(&params)).await else {
        return Vec::new();
    };
    let mut items = list.items;
    items.sort_by_key(|e| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
    });
    let lines: Vec<String> = items
        .iter()
        .map(|e| {
            format!(
                "event {} {}: {}",
                e.type_.as_deref().unwrap_or("Normal"),
                e.reason.as_deref().unwrap_or(""),
                e.message.as_deref().unwrap_or("")
            )
        })
        .collect();
    let skip = lines.len().saturating_sub(FAILURE_LINES);
    lines.into_iter().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail("a\nb\r\nc\n", 2), ["b", "c"]);
        assert!(tail("", 5).is_empty());
    }
}
