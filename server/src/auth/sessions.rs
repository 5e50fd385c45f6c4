//! Callers remembered between requests, so that a request costs one
//! statement (its own) instead of three (Login with membership, Project and
//! user; AccessPolicies; its own) plus parsing and policy compilation.
//!
//! Correctness rests on forgetting: a committed write to a Login, membership,
//! Project, User, AccessPolicy or ClientApplication makes every instance drop
//! what it remembered from it ([`crate::store::changes`]): this instance at
//! commit, the others when PostgreSQL delivers the notification (typically
//! within a millisecond). A caller loaded while such a change committed is
//! not remembered (the generation moved on), nothing is remembered while the
//! listener is down, and every entry expires after [`LIFETIME`] regardless.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Caller;
use crate::store::changes::{Change, ChangeObserver};

/// The longest a caller is remembered, whatever happens.
const LIFETIME: Duration = Duration::from_secs(60);

/// Callers remembered at most; when full, the cache starts over.
const CAPACITY: usize = 50_000;

/// A token's Login, scope and client: what its caller is built from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub login_id: Uuid,
    pub scope: String,
    pub client_id: String,
}

#[derive(Default)]
pub struct SessionCache {
    state: Mutex<State>,
    hearing: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Moves on with every change, so a load that overlapped one is not kept.
    generation: u64,
    entries: HashMap<SessionKey, Remembered>,
}

struct Remembered {
    caller: Caller,
    expires: Instant,
    /// The membership's end date, past which the caller is refused.
    membership_ends: Option<DateTime<Utc>>,
}

impl SessionCache {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The generation to pass to [`SessionCache::remember`], read before the
    /// caller is loaded; `None` while changes are not heard.
    pub fn generation(&self) -> Option<u64> {
        self.hearing
            .load(Ordering::Acquire)
            .then(|| self.state().generation)
    }

    pub fn get(&self, key: &SessionKey) -> Option<Caller> {
        if !self.hearing.load(Ordering::Acquire) {
            return None;
        }
        let state = self.state();
        let entry = state.entries.get(key)?;
        let live = entry.expires > Instant::now()
            && entry.membership_ends.is_none_or(|end| Utc::now() < end);
        live.then(|| entry.caller.clone())
    }

    /// Keeps `caller` unless something changed since `generation` was read.
    pub fn remember(
        &self,
        generation: u64,
        key: SessionKey,
        caller: Caller,
        membership_ends: Option<DateTime<Utc>>,
    ) {
        let mut state = self.state();
        if state.generation != generation || !self.hearing.load(Ordering::Acquire) {
            return;
        }
        if state.entries.len() >= CAPACITY {
            state.entries.clear();
        }
        state.entries.insert(
            key,
            Remembered {
                caller,
                expires: Instant::now() + LIFETIME,
                membership_ends,
            },
        );
    }

    fn forget_everything(&self) {
        let mut state = self.state();
        state.generation += 1;
        state.entries.clear();
    }
}

impl ChangeObserver for SessionCache {
    fn changed(&self, change: Change) {
        match change {
            Change::Login(login_id) => {
                let mut state = self.state();
                state.generation += 1;
                state.entries.retain(|key, _| key.login_id != login_id);
            }
            Change::Everything => self.forget_everything(),
            // Callers do not depend on the keys: a token's signature is
            // checked before its caller is looked up.
            Change::SigningKeys => {}
        }
    }

    fn hearing(&self, hearing: bool) {
        self.forget_everything();
        self.hearing.store(hearing, Ordering::Release);
        // A load that read the generation between the two lines above must
        // not be kept either.
        self.forget_everything();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use access_policy::{CompiledPolicy, PolicyInput, Role};

    use super::*;

    fn caller(login_id: Uuid) -> Caller {
        Caller {
            project_id: Uuid::new_v4(),
            role: Role::ProjectAdmin,
            profile: "Practitioner/1".into(),
            login_id,
            user: "User/1".into(),
            membership_id: Uuid::new_v4(),
            client_id: None,
            scope: String::new(),
            auth_method: "password".into(),
            policy: Arc::new(CompiledPolicy::compile(&PolicyInput {
                role: Role::ProjectAdmin,
                profile: "Practitioner/1",
                policies: Vec::new(),
                policy_required: false,
                scopes: &[],
            })),
            own_policies: Vec::new(),
        }
    }

    fn key(login_id: Uuid) -> SessionKey {
        SessionKey {
            login_id,
            scope: String::new(),
            client_id: String::new(),
        }
    }

    fn hearing_cache() -> SessionCache {
        let cache = SessionCache::default();
        cache.hearing(true);
        cache
    }

    #[test]
    fn nothing_is_kept_while_deaf() {
        let cache = SessionCache::default();
        assert_eq!(cache.generation(), None);
        let login = Uuid::new_v4();
        cache.remember(0, key(login), caller(login), None);
        assert!(cache.get(&key(login)).is_none());
    }

    #[test]
    fn a_login_change_forgets_that_login_only() {
        let cache = hearing_cache();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let generation = cache.generation().unwrap();
        cache.remember(generation, key(a), caller(a), None);
        cache.remember(generation, key(b), caller(b), None);
        cache.changed(Change::Login(a));
        assert!(cache.get(&key(a)).is_none());
        assert_eq!(cache.get(&key(b)).unwrap().login_id, b);
        cache.changed(Change::Everything);
        assert!(cache.get(&key(b)).is_none());
    }

    #[test]
    fn a_load_that_overlapped_a_change_is_not_kept() {
        let cache = hearing_cache();
        let login = Uuid::new_v4();
        let generation = cache.generation().unwrap();
        cache.changed(Change::Login(Uuid::new_v4()));
        cache.remember(generation, key(login), caller(login), None);
        assert!(cache.get(&key(login)).is_none());
    }

    #[test]
    fn losing_the_listener_forgets_and_stops_keeping() {
        let cache = hearing_cache();
        let login = Uuid::new_v4();
        cache.remember(cache.generation().unwrap(), key(login), caller(login), None);
        cache.hearing(false);
        assert!(cache.get(&key(login)).is_none());
        assert_eq!(cache.generation(), None);
    }

    #[test]
    fn an_ended_membership_is_not_served() {
        let cache = hearing_cache();
        let login = Uuid::new_v4();
        let ended = Utc::now() - chrono::Duration::seconds(1);
        cache.remember(
            cache.generation().unwrap(),
            key(login),
            caller(login),
            Some(ended),
        );
        assert!(cache.get(&key(login)).is_none());
    }
}
