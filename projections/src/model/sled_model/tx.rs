//! The handler's side of a batch: [`SledTx`], a buffer of writes per tree.

use std::collections::BTreeMap;

use annals::Error;

use super::{guarded, sled_error, SledModel, DATA};

/// The writes of one batch into a [`SledModel`]: sets and removes on the projection's named
/// trees, committed with the batch's checkpoint or not at all. Reads see the batch's own writes
/// first, then what is committed.
///
/// Tree names are 1 to 200 bytes of UTF-8 without control characters; each is a tree of the
/// model (in generation 1 the sled tree `projections/data/<name>`; a rebuilt generation has
/// its own sled trees, see [`SledModel`]).
pub struct SledTx {
    pub(super) model: SledModel,
    /// The projection and generation the batch writes.
    pub(super) projection: String,
    pub(super) generation: u32,
    /// The trees written so far, in the order first written (few per batch: found by name).
    pub(super) trees: Vec<TxTree>,
}

/// One tree's writes in a batch.
pub(super) struct TxTree {
    /// The handler's name of the tree.
    pub(super) name: String,
    /// The sled name of the generation's tree.
    pub(super) physical: String,
    pub(super) tree: sled::Tree,
    /// Key → its new value, or `None` to remove it.
    pub(super) writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl std::fmt::Debug for SledTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledTx")
            .field(
                "writes",
                &self.trees.iter().map(|t| t.writes.len()).sum::<usize>(),
            )
            .finish_non_exhaustive()
    }
}

impl SledTx {
    pub(super) fn new(model: SledModel, projection: &str, generation: u32) -> SledTx {
        SledTx {
            model,
            projection: projection.to_owned(),
            generation,
            trees: Vec::new(),
        }
    }

    fn written(&self, tree: &str) -> Option<&TxTree> {
        self.trees.iter().find(|t| t.name == tree)
    }

    /// The value of `key` in the tree `tree`, with this batch's writes applied.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for an invalid tree name; sled's failure.
    pub fn get(&self, tree: &str, key: impl AsRef<[u8]>) -> annals::Result<Option<Vec<u8>>> {
        let key = key.as_ref();
        match self.written(tree) {
            Some(written) => match written.writes.get(key) {
                Some(value) => Ok(value.clone()),
                None => guarded(|| {
                    written
                        .tree
                        .get(key)
                        .map(|v| v.map(|v| v.to_vec()))
                        .map_err(sled_error)
                }),
            },
            None => {
                check_tree_name(tree)?;
                let physical = physical(tree, &self.projection, self.generation);
                let handle = self.model.inner.tree(&physical)?;
                guarded(|| {
                    handle
                        .get(key)
                        .map(|v| v.map(|v| v.to_vec()))
                        .map_err(sled_error)
                })
            }
        }
    }

    /// Sets `key` of the tree `tree` to `value`.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for an invalid tree name.
    pub fn insert(
        &mut self,
        tree: &str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> annals::Result<()> {
        self.write(tree, key.into(), Some(value.into()))
    }

    /// Removes `key` from the tree `tree`.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for an invalid tree name.
    pub fn remove(&mut self, tree: &str, key: impl Into<Vec<u8>>) -> annals::Result<()> {
        self.write(tree, key.into(), None)
    }

    fn write(&mut self, tree: &str, key: Vec<u8>, value: Option<Vec<u8>>) -> annals::Result<()> {
        let index = match self.trees.iter().position(|t| t.name == tree) {
            Some(index) => index,
            None => {
                check_tree_name(tree)?;
                let physical = physical(tree, &self.projection, self.generation);
                let handle = self.model.inner.tree(&physical)?;
                self.trees.push(TxTree {
                    name: tree.to_owned(),
                    physical,
                    tree: handle,
                    writes: BTreeMap::new(),
                });
                self.trees.len() - 1
            }
        };
        if let Some(written) = self.trees.get_mut(index) {
            written.writes.insert(key, value);
        }
        Ok(())
    }
}

/// Checks a read-model tree name: 1 to 200 bytes, no control characters.
pub(super) fn check_tree_name(name: &str) -> annals::Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 200 {
        "longer than 200 bytes"
    } else if name.chars().any(char::is_control) {
        "holds a control character"
    } else {
        return Ok(());
    };
    Err(Error::configuration(
        "tree",
        format!("the read-model tree name {name:?} is {reason}"),
    ))
}

/// The sled name of the tree `tree` of `projection`'s generation `generation`:
/// `projections/data/<tree>` for generation 1 (as before generations existed), with a unit
/// separator, the projection and the generation after it for the others.
pub(super) fn physical(tree: &str, projection: &str, generation: u32) -> String {
    if generation <= 1 {
        format!("{DATA}{tree}")
    } else {
        format!("{DATA}{tree}{}", suffix(projection, generation))
    }
}

/// What ends the sled names of a rebuilt generation's trees.
pub(super) fn suffix(projection: &str, generation: u32) -> String {
    format!("\u{1f}{projection}\u{1f}{generation}")
}
