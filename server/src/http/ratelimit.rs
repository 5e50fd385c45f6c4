//! Per-address rate limit on `/auth/*` and `/oauth2/*` (`governor`, GCRA),
//! so that password guessing and token-endpoint abuse stay slow. Each
//! instance limits on its own; the lockout in PostgreSQL is what holds
//! across instances.

use std::{net::IpAddr, num::NonZeroU32};

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web,
};
use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota};

use crate::{app::AppState, error::Error};

pub struct AuthLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl AuthLimiter {
    pub fn new(per_minute: u32) -> AuthLimiter {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        AuthLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
        }
    }

    /// Forgets addresses whose allowance is full again, so memory does not
    /// grow with every address ever seen.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn check(&self, address: IpAddr) -> Result<(), Error> {
        self.limiter.check_key(&address).map_err(|not_until| {
            metrics::counter!(crate::metrics::RATE_LIMITED).increment(1);
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Error::TooManyRequests {
                message: format!(
                    "Too many sign-in and token requests from this address; try again in {seconds} seconds"
                ),
                retry_after_secs: seconds.max(1),
            }
        })
    }
}

/// The middleware: counts requests to the identity routes per client address.
pub async fn limit_auth(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let path = req.path();
    if path.starts_with("/auth/") || path.starts_with("/oauth2/") {
        let state = req.app_data::<web::Data<AppState>>();
        if let Some(state) = state {
            let client = super::client_address::client_address(
                req.headers(),
                req.peer_addr(),
                &state.config.trusted_proxies,
            );
            if let Some(client) = client {
                state.auth_limiter.check(client)?;
            }
        }
    }
    next.call(req).await
}
