//! The dnstap emitter: frames from the tap go to the Frame Streams writer (a sensor's socket)
//! and/or straight into an in-process sensor pipeline. Handing a frame over never waits: each
//! output has a bounded queue and a full queue drops the frame and counts it, because a DNS
//! user must not wait for passive DNS (the one deliberate drop in dnsledger).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ResolverStats;
use crate::framestream::FrameSender;

/// Frames gathered into one batch for an in-process sensor.
const SENSOR_BATCH: usize = 256;

/// Where frames go.
#[derive(Clone)]
pub(crate) struct Emitter {
    writer: Option<FrameSender>,
    sensor: Option<mpsc::Sender<Bytes>>,
    stats: Arc<ResolverStats>,
}

impl Emitter {
    pub(crate) fn new(
        writer: Option<FrameSender>,
        sensor: Option<mpsc::Sender<Bytes>>,
        stats: Arc<ResolverStats>,
    ) -> Self {
        Self { writer, sensor, stats }
    }

    /// Whether frames go anywhere; without an output the tap builds none.
    pub(crate) fn is_active(&self) -> bool {
        self.writer.is_some() || self.sensor.is_some()
    }

    pub(crate) fn emit(&self, frame: Bytes) {
        self.stats.dnstap_frames.inc();
        if let Some(w) = &self.writer {
            // Counted by the writer's own `frames_dropped_queue_full` when full.
            w.try_send(frame.clone());
        }
        if let Some(s) = &self.sensor
            && s.try_send(frame).is_err()
        {
            self.stats.dnstap_dropped_sensor.inc();
        }
    }
}

/// Moves frames from the emitter's queue into the in-process sensor's input in batches, waiting
/// for the sensor when it is busy (its own queue is bounded). Ends when the emitter is gone, or
/// on `shutdown` after handing over what is already queued.
pub(crate) fn spawn_sensor_feed(
    mut from: mpsc::Receiver<Bytes>,
    to: mpsc::Sender<Vec<Bytes>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                f = from.recv() => f,
                _ = shutdown.cancelled() => {
                    from.close();
                    from.recv().await
                }
            };
            let Some(first) = first else { return };
            let mut batch = Vec::with_capacity(SENSOR_BATCH);
            batch.push(first);
            while batch.len() < SENSOR_BATCH {
                match from.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
            if to.send(batch).await.is_err() {
                return;
            }
        }
    })
}
