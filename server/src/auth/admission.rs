//! Fair shares of the database between callers: each membership's requests
//! that can hold a connection for long (searches, history, Bundles,
//! conditional writes) run at most `FHIRGATE_MAX_CONCURRENT_PER_CALLER` at
//! once on an instance. More wait for a turn without holding a database
//! connection, so one member flooding the server with expensive searches
//! slows itself, not the other projects or `/healthcheck`. Reads by id and
//! single writes take no turn: each is short and bounded, and limiting them
//! cost a lone client a quarter of its reads and a third of its creates
//! (bench/RESULTS.md, 2026-12-07).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Idle callers are forgotten once this many are known.
const FORGET_IDLE_AFTER: usize = 10_000;

pub struct Admission {
    per_caller: usize,
    /// The longest a request waits for its turn before 429.
    wait: Duration,
    callers: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
}

impl Admission {
    pub fn new(per_caller: usize, wait: Duration) -> Admission {
        Admission {
            per_caller: per_caller.max(1),
            wait,
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// A turn for one request of `membership`, held until it is dropped.
    pub async fn admit(&self, membership: Uuid) -> Result<OwnedSemaphorePermit> {
        let semaphore = {
            let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
            if callers.len() >= FORGET_IDLE_AFTER {
                let per_caller = self.per_caller;
                callers
                    .retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < per_caller);
            }
            callers
                .entry(membership)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller)))
                .clone()
        };
        match tokio::time::timeout(self.wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::TooManyRequests {
                message: format!(
                    "Too many of your requests are running at once (at most {} per caller, FHIRGATE_MAX_CONCURRENT_PER_CALLER); retry when some have finished",
                    self.per_caller
                ),
                retry_after_secs: 1,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_caller_waits_for_its_own_turns_only() {
        let admission = Admission::new(2, Duration::from_millis(50));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = admission.admit(a).await.unwrap();
        let _second = admission.admit(a).await.unwrap();
        assert!(matches!(
            admission.admit(a).await,
            Err(Error::TooManyRequests { .. })
        ));
        // Another caller is not held up.
        assert!(admission.admit(b).await.is_ok());
        drop(first);
        assert!(admission.admit(a).await.is_ok());
    }
}
