//! Generations of the sled model: their records, the routes readers follow, the swap and the
//! drop of a generation.
//!
//! A generation `g ≥ 2` of a projection writes the sled trees
//! `projections/data/<tree>␟<projection>␟<g>` (`␟` is the unit separator, which no tree or
//! projection name holds); generation 1 writes `projections/data/<tree>`. The route of a tree
//! (`projections/routes`: tree name → sled name) says which of them readers see; a tree without
//! a route is read from its generation-1 name. A swap changes the generations record and the
//! routes of every tree of the new generation in one batch record — one atomic step, also
//! across a crash.

use annals::Position;

use super::codec::{self, Group, Opened};
use super::errors::{damaged, guarded, newer, sled_error};
use super::inner::Inner;
use super::tx::{check_tree_name, physical, suffix};
use super::{DATA, GENERATIONS, ROUTES};
use crate::model::{check_caught_up, Generations, PartitionKey, SwapError};
use crate::{ProjectionError, ProjectionName, Result};

impl Inner {
    /// The generations record of `projection` and the last generation number it used.
    fn record(&self, projection: &ProjectionName) -> Result<(Generations, u32)> {
        if let Some(found) = self.generation_cache.get(projection.as_str()) {
            return Ok(found.clone());
        }
        let key = projection.as_str().as_bytes();
        let stored = guarded(|| self.generations.get(key).map_err(sled_error))?;
        let record = match stored {
            None => (Generations::default(), 1),
            Some(value) => match codec::open(key, &value) {
                Ok(Opened::Body(body)) => codec::decode_generations(body)
                    .map_err(|reason| damaged("a generations record", key, &reason))?,
                Ok(Opened::Newer(found)) => return Err(newer("a generations record", key, found)),
                Err(reason) => return Err(damaged("a generations record", key, &reason).into()),
            },
        };
        self.generation_cache
            .insert(projection.as_str().to_owned(), record.clone());
        Ok(record)
    }

    /// The generations of `projection`.
    pub(super) fn generations_of(&self, projection: &ProjectionName) -> Result<Generations> {
        Ok(self.record(projection)?.0)
    }

    /// The generations record's write (the commit lock held).
    fn record_write(projection: &ProjectionName, generations: &Generations, last: u32) -> Group {
        let key = projection.as_str().as_bytes().to_vec();
        let value = codec::seal(&key, &codec::generations_body(generations, last));
        Group {
            tree: GENERATIONS.to_owned(),
            writes: vec![(key, Some(value))],
        }
    }

    /// Commits `groups` (the generations record among them) and forgets the cached records.
    fn commit_change(&self, projection: &ProjectionName, groups: &[Group]) -> annals::Result<()> {
        let mut key = codec::projection_prefix(projection.as_str());
        key.extend_from_slice(b"generations");
        self.generation_cache.remove(projection.as_str());
        let done = self.commit_groups(&key, groups);
        self.generation_cache.remove(projection.as_str());
        self.route_cache.clear();
        done
    }

    /// The sled name readers of the tree `tree` see.
    pub(super) fn route(&self, tree: &str) -> annals::Result<String> {
        check_tree_name(tree)?;
        if let Some(found) = self.route_cache.get(tree) {
            return Ok(found.clone());
        }
        let stored = guarded(|| self.routes.get(tree.as_bytes()).map_err(sled_error))?;
        let route = match stored {
            Some(name) => String::from_utf8(name.to_vec())
                .map_err(|_| damaged("a route", tree.as_bytes(), "not UTF-8"))?,
            None => format!("{DATA}{tree}"),
        };
        self.route_cache.insert(tree.to_owned(), route.clone());
        Ok(route)
    }

    /// The tree names written in `projection`'s generation `generation` (≥ 2).
    fn trees_of(&self, projection: &str, generation: u32) -> annals::Result<Vec<String>> {
        let end = suffix(projection, generation);
        Ok(self
            .store
            .tree_names(DATA)?
            .into_iter()
            .filter_map(|name| {
                name.strip_suffix(end.as_str())
                    .and_then(|n| n.strip_prefix(DATA))
                    .map(str::to_owned)
            })
            .collect())
    }

    /// Begins (or, with `resume`, finds) the generation a rebuild builds.
    pub(super) fn begin(&self, projection: &ProjectionName, resume: bool) -> Result<u32> {
        let _one = self.lock();
        let (mut generations, last) = self.record(projection)?;
        if let Some(building) = generations.building {
            if resume {
                return Ok(building);
            }
            self.forget(projection, building)?;
        }
        let generation = last.max(generations.active) + 1;
        generations.building = Some(generation);
        generations.building_partitions = None;
        // A crash between here and the first batch leaves an empty generation to resume.
        self.commit_change(
            projection,
            &[Self::record_write(projection, &generations, generation)],
        )?;
        Ok(generation)
    }

    /// Swaps `generation` in (see `ReadModel::swap`).
    pub(super) fn swap(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
        at: Position,
        keep_old: bool,
    ) -> std::result::Result<Generations, SwapError> {
        let backend = |e: ProjectionError| SwapError::Backend(super::inner::store_error(e));
        let _one = self.lock();
        let (mut generations, last) = self.record(projection).map_err(backend)?;
        if generations.building != Some(generation) {
            return Err(SwapError::NotBuilding { generations });
        }
        let old = generations.active;
        check_caught_up(partitions, |partition| {
            let of = |g| {
                let key = PartitionKey::in_generation(projection.clone(), g, partition);
                self.checkpoint_of(&key).map_err(backend)
            };
            Ok((of(generation)?, of(old)?))
        })?;
        let trees = self
            .trees_of(projection.as_str(), generation)
            .map_err(SwapError::Backend)?;
        let mut routes = Vec::new();
        let mut previous = Vec::new();
        for tree in &trees {
            previous.push(self.route(tree).map_err(SwapError::Backend)?);
            let to = physical(tree, projection.as_str(), generation);
            routes.push((tree.as_bytes().to_vec(), Some(to.into_bytes())));
        }
        // Trees of the old generation the new one never wrote are empty in it.
        if old >= 2 {
            for tree in self
                .trees_of(projection.as_str(), old)
                .map_err(SwapError::Backend)?
            {
                if !trees.contains(&tree) {
                    let to = physical(&tree, projection.as_str(), generation);
                    routes.push((tree.into_bytes(), Some(to.into_bytes())));
                }
            }
        }
        generations.swapped(at, keep_old);
        let mut groups = vec![Self::record_write(projection, &generations, last)];
        if !routes.is_empty() {
            groups.push(Group {
                tree: ROUTES.to_owned(),
                writes: routes,
            });
        }
        self.commit_change(projection, &groups)
            .map_err(SwapError::Backend)?;
        if !keep_old {
            // Generation 1's trees are known by the routes that moved off them.
            let dropped = if old == 1 {
                previous
                    .into_iter()
                    .filter(|name| !name.contains('\u{1f}'))
                    .collect()
            } else {
                Vec::new()
            };
            if let Err(error) = self.drop_trees(projection, old, &dropped) {
                tracing::warn!(projection = %projection, generation = old, %error, "dropping the old generation failed; drop it later");
            }
        }
        Ok(generations)
    }

    /// Records the partition count of `generation` where none is recorded.
    pub(super) fn record_partitions(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
    ) -> Result<()> {
        let _one = self.lock();
        let (mut generations, last) = self.record(projection)?;
        let before = generations.clone();
        generations.record_partitions(generation, partitions);
        if generations != before {
            self.commit_change(
                projection,
                &[Self::record_write(projection, &generations, last)],
            )?;
        }
        Ok(())
    }

    /// Drops a generation that is neither active nor being built.
    pub(super) fn drop_generation(
        &self,
        projection: &ProjectionName,
        generation: u32,
    ) -> Result<()> {
        let _one = self.lock();
        let (mut generations, last) = self.record(projection)?;
        generations.check_droppable(projection, generation)?;
        // Generation 1's trees: those whose route leads to one of this projection's rebuilt
        // generations now.
        let mut legacy = Vec::new();
        if generation == 1 {
            let mark = format!("\u{1f}{projection}\u{1f}");
            for entry in self.routes.iter() {
                let (tree, to) = guarded(|| entry.map_err(sled_error))?;
                let ours = std::str::from_utf8(&to).is_ok_and(|to| to.contains(&mark));
                if let (true, Ok(tree)) = (ours, std::str::from_utf8(&tree)) {
                    legacy.push(format!("{DATA}{tree}"));
                }
            }
        }
        self.drop_trees(projection, generation, &legacy)?;
        generations.kept.retain(|g| *g != generation);
        self.commit_change(
            projection,
            &[Self::record_write(projection, &generations, last)],
        )?;
        Ok(())
    }

    /// Forgets the generation a rebuild was building (the commit lock held).
    fn forget(&self, projection: &ProjectionName, generation: u32) -> Result<()> {
        self.drop_trees(projection, generation, &[])?;
        Ok(())
    }

    /// Drops a generation's trees (those of `legacy` too), checkpoints and dead letters.
    fn drop_trees(
        &self,
        projection: &ProjectionName,
        generation: u32,
        legacy: &[String],
    ) -> annals::Result<()> {
        let mut names: Vec<String> = legacy.to_vec();
        if generation >= 2 {
            names.extend(
                self.trees_of(projection.as_str(), generation)?
                    .iter()
                    .map(|tree| physical(tree, projection.as_str(), generation)),
            );
        }
        for name in names {
            self.trees.remove(&name);
            self.store.drop_tree(&name)?;
        }
        let stored = crate::model::stored_name(projection, generation);
        let prefix = codec::projection_prefix(&stored);
        for tree in [&self.checkpoints, &self.dead] {
            for entry in tree.scan_prefix(&prefix) {
                let (key, _) = guarded(|| entry.map_err(sled_error))?;
                guarded(|| tree.remove(key).map(drop).map_err(sled_error))?;
            }
        }
        Ok(())
    }

    /// A committed checkpoint.
    pub(super) fn checkpoint_of(&self, key: &PartitionKey) -> Result<Option<Position>> {
        self.position_at(&codec::partition_key(key), "a checkpoint")
    }

    /// A position stored in the checkpoints tree under `key`.
    pub(super) fn position_at(&self, key: &[u8], what: &'static str) -> Result<Option<Position>> {
        let Some(value) = guarded(|| self.checkpoints.get(key).map_err(sled_error))? else {
            return Ok(None);
        };
        match codec::open(key, &value) {
            Ok(Opened::Body(body)) => Ok(Some(
                codec::decode_checkpoint(body).map_err(|reason| damaged(what, key, &reason))?,
            )),
            Ok(Opened::Newer(found)) => Err(newer(what, key, found)),
            Err(reason) => Err(damaged(what, key, &reason).into()),
        }
    }
}
