//! The batch records: how a commit is written, applied and redone (see the module's docs).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use annals::{Error, EventId, Lease, Position};
use annals_sled::SledEventStore;
use dashmap::DashMap;

use super::codec::{self, Group, Opened};
use super::errors::{damaged, guarded, newer, sled_error};
use super::tx::TxTree;
use super::{CHECKPOINTS, DEAD_LETTERS, GENERATIONS, JOURNAL, ROUTES};
use crate::model::{CommitError, DeadLetter, Generations, PartitionKey};
use crate::{ProjectionError, Result};

/// The store error inside a projection error.
pub(super) fn store_error(e: ProjectionError) -> Error {
    match e {
        ProjectionError::Store(e) => e,
        other => Error::backend("projections", other),
    }
}

/// The model's state, shared by its clones.
pub(super) struct Inner {
    pub(super) store: SledEventStore,
    pub(super) journal: sled::Tree,
    pub(super) checkpoints: sled::Tree,
    pub(super) dead: sled::Tree,
    /// Generations records, by projection name.
    pub(super) generations: sled::Tree,
    /// Routes: a tree's name → the sled name of its active generation's tree (absent: the
    /// generation-1 name).
    pub(super) routes: sled::Tree,
    /// The generations records read so far (changed only under the commit lock).
    pub(super) generation_cache: DashMap<String, (Generations, u32)>,
    /// The routes read so far (changed only under the commit lock).
    pub(super) route_cache: DashMap<String, String>,
    /// The effect locks of projections with effects.
    pub(super) effect_locks: crate::model::EffectLocks,
    /// Every tree the model has opened, by its sled name.
    pub(super) trees: DashMap<String, sled::Tree>,
    /// One commit at a time: records are written and applied in one order.
    commit: Mutex<()>,
    /// A committed batch's record could not be applied: apply the journal again before anything
    /// else.
    pub(super) unapplied: AtomicBool,
    /// The order number of the next dead letter.
    next_letter: AtomicU64,
    /// Something was committed since the last flush.
    pub(super) dirty: AtomicBool,
    /// Held while the model is open: one model per store.
    _lease: Lease,
}

/// Everything a commit writes besides running the handler.
pub(super) struct Work {
    pub(super) key: PartitionKey,
    pub(super) trees: Vec<TxTree>,
    pub(super) add: Vec<DeadLetter>,
    pub(super) release: Vec<EventId>,
    pub(super) checkpoint: Position,
    /// The batch is a rebuild's (see `Batch::rebuilding`).
    pub(super) rebuilding: bool,
    /// The partition's new effect mark, when the batch did effects.
    pub(super) effect_mark: Option<Position>,
}

impl Inner {
    pub(super) fn open(store: SledEventStore, lease: Lease) -> Result<Inner> {
        let tree = |name: &str| guarded(|| store.open_tree(name));
        let journal = tree(JOURNAL)?;
        let checkpoints = tree(CHECKPOINTS)?;
        let dead = tree(DEAD_LETTERS)?;
        let generations = tree(GENERATIONS)?;
        let routes = tree(ROUTES)?;
        let trees = DashMap::new();
        trees.insert(JOURNAL.to_owned(), journal.clone());
        trees.insert(CHECKPOINTS.to_owned(), checkpoints.clone());
        trees.insert(DEAD_LETTERS.to_owned(), dead.clone());
        let inner = Inner {
            store,
            journal,
            checkpoints,
            dead,
            generations,
            routes,
            generation_cache: DashMap::new(),
            route_cache: DashMap::new(),
            effect_locks: crate::model::EffectLocks::default(),
            trees,
            commit: Mutex::new(()),
            unapplied: AtomicBool::new(false),
            next_letter: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            _lease: lease,
        };
        let redone = inner.redo()?;
        if redone > 0 {
            tracing::info!(
                records = redone,
                "read model (sled): applied the batches a crash left unapplied"
            );
        }
        // Dead letters keep the order they were set aside in.
        let mut last = 0;
        for entry in inner.dead.iter() {
            let (key, value) = guarded(|| entry.map_err(sled_error))?;
            if let Ok(Opened::Body(body)) = codec::open(&key, &value) {
                if let Ok((seq, _)) = codec::decode_letter(body) {
                    last = last.max(seq);
                }
            }
        }
        inner.next_letter.store(last + 1, Ordering::Release);
        Ok(inner)
    }

    /// The tree named `name` (a full sled name), opened once.
    pub(super) fn tree(&self, name: &str) -> annals::Result<sled::Tree> {
        if let Some(tree) = self.trees.get(name) {
            return Ok(tree.clone());
        }
        let tree = guarded(|| self.store.open_tree(name))?;
        self.trees.insert(name.to_owned(), tree.clone());
        Ok(tree)
    }

    /// The committed value of `key` in the projection's tree `tree`.
    pub(super) fn read(&self, tree: &str, key: &[u8]) -> annals::Result<Option<Vec<u8>>> {
        self.on_route(tree, |tree| tree.get(key).map(|v| v.map(|v| v.to_vec())))
    }

    /// Runs `read` on the active generation's tree `tree`; when that tree was dropped under it
    /// (a swap's old generation), runs it again on the tree the route leads to now.
    pub(super) fn on_route<T>(
        &self,
        tree: &str,
        read: impl Fn(&sled::Tree) -> Result<T, sled::Error>,
    ) -> annals::Result<T> {
        let mut attempts = 0;
        loop {
            let name = self.route(tree)?;
            let handle = self.tree(&name)?;
            match guarded(|| Ok(read(&handle))) {
                Ok(Err(sled::Error::CollectionNotFound(_))) if attempts < 3 => {
                    attempts += 1;
                    self.trees.remove(&name);
                    self.route_cache.remove(tree);
                }
                Ok(result) => return result.map_err(sled_error),
                Err(error) => return Err(error),
            }
        }
    }

    /// Applies every record of the journal, in key order, and removes it. Returns how many.
    pub(super) fn redo(&self) -> Result<usize> {
        let mut redone = 0;
        for entry in self.journal.iter() {
            let (key, value) = guarded(|| entry.map_err(sled_error))?;
            let body = match codec::open(&key, &value) {
                Ok(Opened::Body(body)) => body,
                Ok(Opened::Newer(found)) => return Err(newer("a batch record", &key, found)),
                Err(reason) => return Err(damaged("a batch record", &key, &reason).into()),
            };
            let groups = codec::decode_groups(body)
                .map_err(|reason| damaged("a batch record", &key, &reason))?;
            guarded(|| {
                self.apply(&groups)?;
                self.journal.remove(&key).map(drop).map_err(sled_error)
            })?;
            redone += 1;
        }
        Ok(redone)
    }

    /// Applies a record left unapplied by a failure in this process, if there is one.
    pub(super) fn settle(&self) -> Result<()> {
        if !self.unapplied.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = self.commit.lock().unwrap_or_else(PoisonError::into_inner);
        self.settle_locked()
    }

    pub(super) fn settle_locked(&self) -> Result<()> {
        if self.unapplied.load(Ordering::Acquire) {
            self.redo()?;
            self.unapplied.store(false, Ordering::Release);
        }
        Ok(())
    }

    fn apply(&self, groups: &[Group]) -> annals::Result<()> {
        for group in groups {
            let tree = self.tree(&group.tree)?;
            for (key, value) in &group.writes {
                match value {
                    Some(value) => tree.insert(key.as_slice(), value.as_slice()),
                    None => tree.remove(key.as_slice()),
                }
                .map_err(sled_error)?;
            }
        }
        Ok(())
    }

    /// The final values a batch writes: the handler's, the dead letters' and the checkpoint,
    /// by tree.
    fn plan(&self, work: Work) -> annals::Result<Vec<Group>> {
        let stored = work.key.stored_name();
        let projection: &str = &stored;
        let mut groups = Vec::with_capacity(work.trees.len() + 2);
        for written in work.trees {
            if !written.writes.is_empty() {
                groups.push(Group {
                    tree: written.physical,
                    writes: written.writes.into_iter().collect(),
                });
            }
        }
        let mut letters = Vec::new();
        for id in &work.release {
            letters.push((codec::letter_key(projection, *id), None));
        }
        for letter in work.add {
            let key = codec::letter_key(projection, letter.event.id);
            // Set aside again (not released by this batch): keeps its place, takes the new
            // kind and reason.
            let stored = if work.release.contains(&letter.event.id) {
                None
            } else {
                self.dead.get(&key).map_err(sled_error)?
            };
            let previous = stored.and_then(|value| match codec::open(&key, &value) {
                Ok(Opened::Body(body)) => codec::decode_letter(body).ok(),
                _ => None,
            });
            let (seq, letter) = match previous {
                Some((seq, old)) => (
                    seq,
                    DeadLetter {
                        kind: letter.kind,
                        reason: letter.reason,
                        ..old
                    },
                ),
                None => (self.next_letter.fetch_add(1, Ordering::AcqRel), letter),
            };
            let body = codec::letter_body(seq, &letter)
                .map_err(|reason| Error::backend("projections", reason))?;
            let value = codec::seal(&key, &body);
            letters.push((key, Some(value)));
        }
        if !letters.is_empty() {
            groups.push(Group {
                tree: DEAD_LETTERS.to_owned(),
                writes: letters,
            });
        }
        let key = codec::partition_key(&work.key);
        let value = codec::seal(&key, &codec::checkpoint_body(work.checkpoint));
        let mut checkpoints = vec![(key, Some(value))];
        if let Some(mark) = work.effect_mark {
            let key = codec::effect_key(work.key.projection.as_str(), work.key.partition);
            let value = codec::seal(&key, &codec::checkpoint_body(mark));
            checkpoints.push((key, Some(value)));
        }
        groups.push(Group {
            tree: CHECKPOINTS.to_owned(),
            writes: checkpoints,
        });
        Ok(groups)
    }

    /// Writes a batch: its record (the commit point), then its values, then removes the record;
    /// a batch writing only its checkpoint is that one write. `Err` means nothing of it was
    /// written.
    pub(super) fn write(&self, work: Work) -> std::result::Result<(), CommitError> {
        let _one = self.lock();
        self.settle_locked()
            .map_err(|e| CommitError::Backend(store_error(e)))?;
        // Under the lock a swap takes: nothing lands in a retired generation.
        let generations = self
            .generations_of(&work.key.projection)
            .map_err(|e| CommitError::Backend(store_error(e)))?;
        generations.admit(work.key.generation, work.rebuilding)?;
        let key = codec::partition_key(&work.key);
        let groups = guarded(|| self.plan(work)).map_err(CommitError::Backend)?;
        self.commit_groups(&key, &groups)
            .map_err(CommitError::Backend)
    }

    /// Takes the commit lock.
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.commit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `groups` atomically under the journal key `key` (the commit lock held).
    pub(super) fn commit_groups(&self, key: &[u8], groups: &[Group]) -> annals::Result<()> {
        let key = key.to_vec();
        if let [Group { tree, writes }] = groups {
            if let [(checkpoint, Some(value))] = writes.as_slice() {
                if tree == CHECKPOINTS {
                    // One key: sled writes it atomically, no record needed.
                    return self.write_checkpoint(checkpoint, value);
                }
            }
        }
        let body = codec::encode_groups(groups).map_err(|e| Error::backend("projections", e))?;
        let record = codec::seal(&key, &body);
        if let Err(error) = guarded(|| {
            self.journal
                .insert(key.as_slice(), record.as_slice())
                .map(drop)
                .map_err(sled_error)
        }) {
            // Committed only if the record is there after all.
            let there = guarded(|| self.journal.get(&key).map_err(sled_error));
            match there {
                Ok(Some(found)) if found == record.as_slice() => {}
                Ok(_) => return Err(error),
                Err(_) => {
                    self.unapplied.store(true, Ordering::Release);
                    return Err(error);
                }
            }
        }
        // Committed: the record is in the journal.
        self.dirty.store(true, Ordering::Release);
        let applied = guarded(|| {
            self.apply(groups)?;
            self.journal.remove(&key).map(drop).map_err(sled_error)
        });
        if let Err(error) = applied {
            tracing::error!(
                %error,
                "read model (sled): applying a committed batch failed; it is applied again \
                 before the next batch, read or open"
            );
            self.unapplied.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Writes a checkpoint alone. `Err` means it was not written.
    fn write_checkpoint(&self, key: &[u8], value: &[u8]) -> annals::Result<()> {
        if let Err(error) = guarded(|| {
            self.checkpoints
                .insert(key, value)
                .map(drop)
                .map_err(sled_error)
        }) {
            // Written only if it is there after all.
            match guarded(|| self.checkpoints.get(key).map_err(sled_error)) {
                Ok(Some(found)) if found == value => {}
                _ => return Err(error),
            }
        }
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }
}
