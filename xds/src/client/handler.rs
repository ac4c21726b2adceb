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

/// A resource a per-resource handler did not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Resource name.
    pub name: String,
    /// Why it was not applied.
    pub why: String,
}

impl Rejected {
    /// `resource "<name>": <why>`, as a NACK names it.
    pub(crate) fn describe(&self) -> String {
        format!("resource {:?}: {}", clip(&self.name, MAX_QUOTED), clip(&self.why, MAX_QUOTED))
    }
}

/// Longest NACK message (`error_detail.message`), in bytes. A server reads requests up to a
/// limit (gRPC's default is 4 MiB) and ends a stream whose request it cannot read; a message with a
/// reason for each of thousands of rejected resources would end every stream it is sent on, and
/// each new stream would be sent the same push again. The message is also logged on both sides
/// and shown by `meshctl proxy-status`; the client's status has every rejected name in full
/// ([`ClientTypeStatus::rejected`](super::ClientTypeStatus::rejected)).
pub(crate) const MAX_NACK_MESSAGE: usize = 4096;

/// Longest name or reason quoted for one resource, in bytes, so that one long reason (a
/// regex error quotes the whole pattern) leaves room for the other resources to be named.
pub(crate) const MAX_QUOTED: usize = 256;

/// Room kept at the end of a NACK message for `; and <count> more`.
const TAIL_ROOM: usize = 32;

/// `text` cut to at most `max` bytes, at a character boundary, marked with `…` where cut.
pub(crate) fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// Receives the decoded resources of one type URL.
///
/// By default a push is all or nothing ([`apply`](Self::apply)): when it returns `Err`, the
/// client NACKs the push with that message and the handler must have kept its previous state.
/// A handler that is [`per_resource`](Self::per_resource) applies what it can instead
/// ([`apply_each`](Self::apply_each)) and the client NACKs naming the rest; a resource that
/// cannot even be decoded then reaches it as a removal.
pub trait ResourceHandler: Send + 'static {
    /// The message every resource of the type decodes to.
    type Message: prost::Message + Default;

    /// Applies one push: `updates` to add or replace, `removals` to drop.
    fn apply(&mut self, updates: Vec<Update<Self::Message>>, removals: Vec<String>) -> Result<(), String>;

    /// Whether one bad resource leaves the rest of its push applied (see the trait's docs).
    fn per_resource(&self) -> bool {
        false
    }

    /// Applies one push resource by resource; the client calls it instead of
    /// [`apply`](Self::apply) for a [`per_resource`](Self::per_resource) handler. Returns the
    /// resources not applied, each of which must be gone from the handler's state (any version
    /// it held before too): the client records the rest of the push as held, and a resumed
    /// stream declares exactly that to the server. `Err` is all or nothing, as from `apply`.
    ///
    /// The default is `apply`, all or nothing.
    fn apply_each(
        &mut self,
        updates: Vec<Update<Self::Message>>,
        removals: Vec<String>,
    ) -> Result<Vec<Rejected>, String> {
        self.apply(updates, removals).map(|()| Vec::new())
    }
}

/// Why a push was not applied, or not all of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// Nothing of the push was applied.
    Push(String),
    /// Everything else in the push was applied; these were not, and are not held.
    Resources(Vec<Rejected>),
}

impl Refusal {
    /// The NACK's message, at most [`MAX_NACK_MESSAGE`] bytes: rejected resources with why in
    /// the first half, then the names of the rest while there is room, then how many more.
    pub(crate) fn message(&self) -> String {
        let rejected = match self {
            Refusal::Push(message) => return clip(message, MAX_NACK_MESSAGE).into_owned(),
            Refusal::Resources(rejected) => rejected,
        };
        let room = MAX_NACK_MESSAGE - TAIL_ROOM;
        let mut out = String::new();
        if rejected.len() > 1 {
            out = format!("{} resources rejected: ", rejected.len());
        }
        let mut described = 0;
        for r in rejected {
            let entry = r.describe();
            let separator = if described == 0 { "" } else { "; " };
            // Half the room at most, so that a push rejecting many is still mostly named.
            if out.len() + separator.len() + entry.len() > room / 2 {
                break;
            }
            out.push_str(separator);
            out.push_str(&entry);
            described += 1;
        }
        let mut named = described;
        for r in &rejected[described..] {
            let entry = format!("{:?}", clip(&r.name, MAX_QUOTED));
            let separator = if named == described { "; also " } else { ", " };
            if out.len() + separator.len() + entry.len() > room {
                break;
            }
            out.push_str(separator);
            out.push_str(&entry);
            named += 1;
        }
        if named < rejected.len() {
            out.push_str(&format!("; and {} more", rejected.len() - named));
        }
        out
    }
}

/// A handler with its message type erased, so one client holds many types.
pub(crate) trait ErasedHandler: Send {
    fn apply_raw(&mut self, type_url: &str, resources: Vec<Resource>, removals: Vec<String>) -> Result<(), Refusal>;
}

impl<H: ResourceHandler> ErasedHandler for H {
    fn apply_raw(
        &mut self,
        type_url: &str,
        resources: Vec<Resource>,
        mut removals: Vec<String>,
    ) -> Result<(), Refusal> {
        let per_resource = self.per_resource();
        let mut updates = Vec::with_capacity(resources.len());
        let mut undecoded = Vec::new();
        for resource in resources {
            let decoded = match &resource.resource {
                None => Err("no body".to_owned()),
                Some(body) if body.type_url != type_url => {
                    Err(format!("body type {:?}, expected {type_url:?}", body.type_url))
                }
                Some(body) => <H::Message as prost::Message>::decode(body.value.as_slice()).map_err(|e| e.to_string()),
            };
            match decoded {
                Ok(m) => updates.push(Update { name: resource.name, version: resource.version, resource: m }),
                Err(why) if per_resource => {
                    removals.push(resource.name.clone());
                    undecoded.push(Rejected { name: resource.name, why });
                }
                Err(why) => return Err(Refusal::Push(Rejected { name: resource.name, why }.describe())),
            }
        }
        if !per_resource {
            return self.apply(updates, removals).map_err(Refusal::Push);
        }
        match self.apply_each(updates, removals) {
            Ok(mut rejected) => {
                rejected.append(&mut undecoded);
                if rejected.is_empty() { Ok(()) } else { Err(Refusal::Resources(rejected)) }
            }
            Err(e) if undecoded.is_empty() => Err(Refusal::Push(e)),
            Err(e) => {
                let undecoded = Refusal::Resources(undecoded).message();
                Err(Refusal::Push(format!("{e}; {undecoded}")))
            }
        }
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
/// nothing of that push is applied; unless the handler is per resource
/// ([`cache_handler_per_resource`]): then the others are applied, and the
/// resources that fail are removed from the cache and named in the NACK.
pub struct CacheHandler<M, V, F> {
    cache: Cache<V>,
    convert: F,
    per_resource: bool,
    _message: std::marker::PhantomData<fn() -> M>,
}

/// A cache and the handler that fills it with `convert`ed resources.
pub fn cache_handler<M, V, F>(convert: F) -> (Cache<V>, CacheHandler<M, V, F>)
where
    F: FnMut(&str, M) -> Result<V, String>,
{
    let cache = Cache::default();
    let handler =
        CacheHandler { cache: cache.clone(), convert, per_resource: false, _message: std::marker::PhantomData };
    (cache, handler)
}

/// [`cache_handler`] whose pushes apply resource by resource: a resource that does not decode or
/// convert is removed (whatever version of it the cache held goes too) and named in the NACK,
/// and the rest of its push is applied. For types where absence is the safe reading of a
/// resource that cannot be understood, and where one such resource must not hold back every
/// later change: the server sends a NACKed resource again with the next push of its type, so
/// with all-or-nothing one bad resource would block the type until it is fixed.
pub fn cache_handler_per_resource<M, V, F>(convert: F) -> (Cache<V>, CacheHandler<M, V, F>)
where
    F: FnMut(&str, M) -> Result<V, String>,
{
    let (cache, mut handler) = cache_handler(convert);
    handler.per_resource = true;
    (cache, handler)
}

impl<M, V, F> ResourceHandler for CacheHandler<M, V, F>
where
    M: prost::Message + Default + 'static,
    V: Send + Sync + 'static,
    F: FnMut(&str, M) -> Result<V, String> + Send + 'static,
{
    type Message = M;

    fn per_resource(&self) -> bool {
        self.per_resource
    }

    fn apply(&mut self, updates: Vec<Update<M>>, removals: Vec<String>) -> Result<(), String> {
        match self.apply_each(updates, removals)? {
            rejected if rejected.is_empty() => Ok(()),
            rejected => Err(Refusal::Resources(rejected).message()),
        }
    }

    fn apply_each(&mut self, updates: Vec<Update<M>>, mut removals: Vec<String>) -> Result<Vec<Rejected>, String> {
        // Convert everything before touching the cache, so that (all or nothing) a bad
        // resource leaves the last good state in place.
        let mut converted = Vec::with_capacity(updates.len());
        let mut rejected = Vec::new();
        for update in updates {
            match (self.convert)(&update.name, update.resource) {
                Ok(value) => converted.push((update.name, Arc::new(value))),
                Err(why) if self.per_resource => {
                    removals.push(update.name.clone());
                    rejected.push(Rejected { name: update.name, why });
                }
                Err(why) => return Err(Rejected { name: update.name, why }.describe()),
            }
        }
        {
            let mut entries = self.cache.entries.write().unwrap_or_else(|p| p.into_inner());
            for name in &removals {
                entries.remove(name);
            }
            entries.extend(converted);
        }
        self.cache.generation.send_modify(|g| *g += 1);
        Ok(rejected)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::{Any, Duration};

    use super::*;

    const TYPE: &str = "type.googleapis.com/google.protobuf.Duration";

    fn resource(name: &str, seconds: i64) -> Resource {
        let body = Any { type_url: TYPE.into(), value: Duration { seconds, nanos: 0 }.encode_to_vec() };
        Resource { name: name.into(), version: format!("v{seconds}"), resource: Some(body), ..Default::default() }
    }

    /// Negative durations do not convert.
    fn convert(_: &str, d: Duration) -> Result<i64, String> {
        if d.seconds < 0 { Err(format!("{} is negative", d.seconds)) } else { Ok(d.seconds) }
    }

    fn held(cache: &Cache<i64>) -> Vec<(String, i64)> {
        cache.snapshot().into_iter().map(|(k, v)| (k, *v)).collect()
    }

    #[test]
    fn all_or_nothing_keeps_the_previous_state_on_a_bad_resource() {
        let (cache, mut h) = cache_handler(convert);
        h.apply_raw(TYPE, vec![resource("a", 1), resource("b", 2)], vec![]).unwrap();
        let err = h.apply_raw(TYPE, vec![resource("a", 10), resource("b", -1)], vec![]).unwrap_err();
        assert_eq!(err, Refusal::Push("resource \"b\": -1 is negative".into()));
        assert_eq!(held(&cache), [("a".into(), 1), ("b".into(), 2)], "nothing of the push applied");
    }

    #[test]
    fn per_resource_applies_the_rest_and_removes_what_it_cannot_read() {
        let (cache, mut h) = cache_handler_per_resource(convert);
        h.apply_raw(TYPE, vec![resource("a", 1), resource("b", 2), resource("c", 3)], vec![]).unwrap();
        let generation = *cache.subscribe().borrow();
        let mut garbled = resource("c", 30);
        garbled.resource.as_mut().unwrap().value = vec![0xff, 0xff];
        let mut no_body = resource("d", 4);
        no_body.resource = None;
        let err = h.apply_raw(TYPE, vec![resource("a", 10), resource("b", -1), garbled, no_body], vec![]).unwrap_err();
        let Refusal::Resources(rejected) = &err else { panic!("refused whole: {err:?}") };
        let names: Vec<_> = rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"], "every resource not applied, by name");
        let message = err.message();
        assert!(message.contains("resource \"b\": -1 is negative"), "{message}");
        assert!(message.contains("resource \"c\": ") && message.contains("resource \"d\": no body"), "{message}");
        // The good update applied; the bad ones gone, also the versions held before.
        assert_eq!(held(&cache), [("a".into(), 10)]);
        assert_eq!(*cache.subscribe().borrow(), generation + 1, "the push counts as applied");
        // A push with nothing wrong is acknowledged again.
        h.apply_raw(TYPE, vec![resource("b", 5)], vec!["a".into()]).unwrap();
        assert_eq!(held(&cache), [("b".into(), 5)]);
    }
}
