//! How received resources reach the caller: a typed handler per type URL,
//! and a ready-made validating cache.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use proto::envoy::service::discovery::v3::Resource;
use tokio::sync::watch;

/// One decoded resource of a push.
#[derive(Debug, Clone, PartialEq)]
pub struct Update<M> {
    /// Resource name.
    pub name: String,
    /// Version assigned by the server.
    pub version: String,
    /// The decoded body.
    pub resource: M,
}

/// Receives the decoded resources of one type URL.
///
/// `apply` is all or nothing: when it returns `Err`, the client NACKs the
/// push with that message and the handler must have kept its previous state.
pub trait ResourceHandler: Send + 'static {
    /// The message every resource of the type decodes to.
    type Message: prost::Message + Default;

    /// Applies one push: `updates` to add or replace, `removals` to drop.
    fn apply(&mut self, updates: Vec<Update<Self::Message>>, removals: Vec<String>) -> Result<(), String>;
}

/// A handler with its message type erased, so one client holds many types.
pub(crate) trait ErasedHandler: Send {
    fn apply_raw(&mut self, type_url: &str, resources: Vec<Resource>, removals: Vec<String>) -> Result<(), String>;
}

impl<H: ResourceHandler> ErasedHandler for H {
    fn apply_raw(&mut self, type_url: &str, resources: Vec<Resource>, removals: Vec<String>) -> Result<(), String> {
        let mut updates = Vec::with_capacity(resources.len());
        for resource in resources {
            let Some(body) = resource.resource else {
                return Err(format!("resource {:?}: no body", resource.name));
            };
            if body.type_url != type_url {
                return Err(format!(
                    "resource {:?}: body type {:?}, expected {type_url:?}",
                    resource.name, body.type_url
                ));
            }
            let decoded = <H::Message as prost::Message>::decode(body.value.as_slice())
                .map_err(|e| format!("resource {:?}: {e}", resource.name))?;
            updates.push(Update { name: resource.name, version: resource.version, resource: decoded });
        }
        self.apply(updates, removals)
    }
}

/// A typed local cache of validated resources, readable from anywhere.
#[derive(Debug)]
pub struct Cache<V> {
    entries: Arc<RwLock<BTreeMap<String, Arc<V>>>>,
    generation: Arc<watch::Sender<u64>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self { entries: self.entries.clone(), generation: self.generation.clone() }
    }
}

impl<V> Default for Cache<V> {
    fn default() -> Self {
        Self { entries: Arc::default(), generation: Arc::new(watch::channel(0).0) }
    }
}

impl<V> Cache<V> {
    /// The entry `name`.
    pub fn get(&self, name: &str) -> Option<Arc<V>> {
        self.read().get(name).cloned()
    }

    /// Every entry, by name.
    pub fn snapshot(&self) -> BTreeMap<String, Arc<V>> {
        self.read().clone()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// A receiver woken after every applied push; the value counts them.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<V>>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// A [`ResourceHandler`] that converts each message with `convert` and keeps
/// the results in a [`Cache`]. If any resource of a push fails to convert,
/// nothing of that push is applied.
pub struct CacheHandler<M, V, F> {
    cache: Cache<V>,
    convert: F,
    _message: std::marker::PhantomData<fn() -> M>,
}

/// A cache and the handler that fills it with `convert`ed resources.
pub fn cache_handler<M, V, F>(convert: F) -> (Cache<V>, CacheHandler<M, V, F>)
where
    F: FnMut(&str, M) -> Result<V, String>,
{
    let cache = Cache::default();
    let handler = CacheHandler { cache: cache.clone(), convert, _message: std::marker::PhantomData };
    (cache, handler)
}

impl<M, V, F> ResourceHandler for CacheHandler<M, V, F>
where
    M: prost::Message + Default + 'static,
    V: Send + Sync + 'static,
    F: FnMut(&str, M) -> Result<V, String> + Send + 'static,
{
    type Message = M;

    fn apply(&mut self, updates: Vec<Update<M>>, removals: Vec<String>) -> Result<(), String> {
        // Convert everything before touching the cache, so a bad resource
        // leaves the last good state in place.
        let mut converted = Vec::with_capacity(updates.len());
        for update in updates {
            let value = (self.convert)(&update.name, update.resource)
                .map_err(|e| format!("resource {:?}: {e}", update.name))?;
            converted.push((update.name, Arc::new(value)));
        }
        {
            let mut entries = self.cache.entries.write().unwrap_or_else(|p| p.into_inner());
            for name in &removals {
                entries.remove(name);
            }
            entries.extend(converted);
        }
        self.cache.generation.send_modify(|g| *g += 1);
        Ok(())
    }
}
