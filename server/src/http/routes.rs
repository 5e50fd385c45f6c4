//! The one place routes are added. Each handler comes with the
//! `#[utoipa::path]` description generated beside it, and the route is made
//! from that description's method and path: the OpenAPI document
//! (`GET /openapi.json`) lists exactly what is routed, so the two cannot
//! drift. (utoipa-actix-web would need actix's per-handler route macros and
//! lets `.route()` add undocumented routes silently.)

use actix_web::{web, FromRequest, Handler, HttpRequest, HttpResponse, Responder};
use utoipa::openapi::{
    path::{HttpMethod, Operation},
    schema::Schema,
    RefOr,
};

use crate::error::{Error, Result};

/// The path template a request was routed by (`/fhir/R4/{type}/{id}`), in
/// each resource's app data: found without matching the path again (actix's
/// `match_pattern` runs every route's regex once more).
pub struct RouteTemplate(pub String);

/// One routed operation, as the document describes it.
pub struct Documented {
    pub method: HttpMethod,
    pub path: String,
    pub operation: Operation,
}

/// A path and the methods routed on it: one actix resource, whose other
/// methods are answered 405 with an OperationOutcome.
struct Resource {
    path: String,
    /// Other spellings of the path (a trailing slash) served alike.
    aliases: Vec<String>,
    routes: Vec<(HttpMethod, actix_web::Route)>,
}

/// Resources in matching order (actix tries them in turn); those of a scope
/// are matched only when the request's path starts with its prefix.
enum Entry {
    Resource(Resource),
    Scope {
        prefix: &'static str,
        resources: Vec<Resource>,
    },
}

#[derive(Default)]
pub struct Routes {
    entries: Vec<Entry>,
    /// The entry that `add` fills while a scope is open.
    open_scope: Option<usize>,
    documented: Vec<Documented>,
    schemas: Vec<(String, RefOr<Schema>)>,
}

impl Routes {
    /// Routes `handler` at the path and methods of its `#[utoipa::path]`
    /// description `described` (the `__path_<handler>` type the macro makes).
    pub fn add<P, F, Args>(&mut self, _described: P, handler: F) -> &mut Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        let path = P::path();
        let methods = P::methods();
        P::schemas(&mut self.schemas);
        for method in &methods {
            let mut operation = P::operation();
            // Handlers of different areas share names; the tag keeps ids unique.
            let id = operation.operation_id.take().unwrap_or_default();
            operation.operation_id = Some(match methods.len() {
                1 => format!("{}.{id}", tag(&path)),
                _ => format!("{}.{id}.{}", tag(&path), method_name(method)),
            });
            operation.tags = Some(vec![tag(&path).to_string()]);
            self.documented.push(Documented {
                method: method.clone(),
                path: path.clone(),
                operation,
            });
            let route = web::route()
                .method(actix_method(method))
                .to(handler.clone());
            self.resource(&path).routes.push((method.clone(), route));
        }
        self
    }

    /// Serves `path`, already added, at `alias` too.
    pub fn alias(&mut self, path: &str, alias: &str) -> &mut Self {
        self.resource(path).aliases.push(alias.to_string());
        self
    }

    /// Adds the routes of `add` under one actix scope: requests outside
    /// `prefix` skip all their patterns at once (actix tries routes in order).
    pub fn scope(&mut self, prefix: &'static str, add: impl FnOnce(&mut Routes)) -> &mut Self {
        self.entries.push(Entry::Scope {
            prefix,
            resources: Vec::new(),
        });
        self.open_scope = Some(self.entries.len() - 1);
        add(self);
        self.open_scope = None;
        self
    }

    /// The resource of `path` where routes go now, created at the end if new.
    fn resource(&mut self, path: &str) -> &mut Resource {
        let resources: &mut Vec<Resource> = match self.open_scope {
            Some(index) => match &mut self.entries[index] {
                Entry::Scope { prefix, resources } => {
                    assert!(path.starts_with(*prefix), "{path} is outside {prefix}");
                    resources
                }
                Entry::Resource(_) => unreachable!("open_scope indexes a scope"),
            },
            None => {
                let found = self
                    .entries
                    .iter()
                    .position(|entry| matches!(entry, Entry::Resource(r) if r.path == path));
                let index = found.unwrap_or_else(|| {
                    self.entries.push(Entry::Resource(Resource::new(path)));
                    self.entries.len() - 1
                });
                match &mut self.entries[index] {
                    Entry::Resource(resource) => return resource,
                    Entry::Scope { .. } => unreachable!("position found a resource"),
                }
            }
        };
        let index = match resources.iter().position(|r| r.path == path) {
            Some(index) => index,
            None => {
                resources.push(Resource::new(path));
                resources.len() - 1
            }
        };
        &mut resources[index]
    }

    /// Every routed method and path (aliases included), in matching order.
    pub fn routed(&self) -> Vec<(String, String)> {
        let resources = self.entries.iter().flat_map(|entry| match entry {
            Entry::Resource(resource) => std::slice::from_ref(resource),
            Entry::Scope { resources, .. } => resources.as_slice(),
        });
        resources
            .flat_map(|resource| {
                resource.routes.iter().flat_map(move |(method, _)| {
                    std::iter::once(&resource.path)
                        .chain(&resource.aliases)
                        .map(move |path| (method_name(method).to_string(), path.clone()))
                })
            })
            .collect()
    }

    /// The operations and the schemas they refer to, for the document.
    pub fn into_documented(self) -> (Vec<Documented>, Vec<(String, RefOr<Schema>)>) {
        (self.documented, self.schemas)
    }

    /// Installs the routes into the app.
    pub fn install(self, cfg: &mut web::ServiceConfig) {
        for entry in self.entries {
            match entry {
                Entry::Resource(resource) => {
                    cfg.service(resource.into_actix(""));
                }
                Entry::Scope { prefix, resources } => {
                    let scope = resources
                        .into_iter()
                        .fold(web::scope(prefix), |scope, resource| {
                            scope.service(resource.into_actix(prefix))
                        });
                    cfg.service(scope);
                }
            }
        }
    }
}

impl Resource {
    fn new(path: &str) -> Resource {
        Resource {
            path: path.to_string(),
            aliases: Vec::new(),
            routes: Vec::new(),
        }
    }

    fn into_actix(self, prefix: &str) -> actix_web::Resource {
        let paths: Vec<String> = std::iter::once(&self.path)
            .chain(&self.aliases)
            .map(|path| path[prefix.len()..].to_string())
            .collect();
        let resource = web::resource(paths).app_data(RouteTemplate(self.path));
        self.routes
            .into_iter()
            .fold(resource, |resource, (_, route)| resource.route(route))
            .default_service(web::to(method_not_allowed))
    }
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse> {
    Err(Error::MethodNotAllowed(format!(
        "{} is not supported on {}",
        req.method(),
        req.path()
    )))
}

/// The area of a path, from its first segment: `fhir`, `auth`, `oauth2`…
fn tag(path: &str) -> &str {
    match path.trim_start_matches('/').split('/').next() {
        Some(".well-known") => "oauth2",
        Some("") | None => "server",
        Some(first) => first,
    }
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "get",
        HttpMethod::Post => "post",
        HttpMethod::Put => "put",
        HttpMethod::Delete => "delete",
        HttpMethod::Options => "options",
        HttpMethod::Head => "head",
        HttpMethod::Patch => "patch",
        HttpMethod::Trace => "trace",
    }
}

fn actix_method(method: &HttpMethod) -> actix_web::http::Method {
    use actix_web::http::Method;
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}
