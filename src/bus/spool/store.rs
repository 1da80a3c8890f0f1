//! The spool's storage: an embedded `redb` database in `spool.dir`.
//!
//! Two tables keyed by a sequence number that only grows: `spooled` (what
//! waits to be forwarded, in order) and `dead` (what the broker refused on
//! forwarding). redb gives what a log of our own would need to get right
//! by hand: a commit is durable once it returns (fsync), a crash mid-commit
//! leaves the previous commit intact (checksummed pages, repaired on
//! open), and removal is a transaction, not a rename of segment files.
//! Each call is one transaction; batching many records into one call is
//! what lets concurrent publishes share an fsync (see `commit`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

const SPOOLED: TableDefinition<u64, &[u8]> = TableDefinition::new("spooled");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");

/// The file in `spool.dir`.
pub const FILE: &str = "spool.redb";

/// A storage failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("spool: {what}: {source}")]
pub struct StoreError {
    what: &'static str,
    source: Box<redb::Error>,
}

impl StoreError {
    /// The writer thread is gone (the process is stopping).
    pub fn stopped() -> Self {
        Self {
            what: "append",
            source: Box::new(redb::Error::Io(std::io::Error::other(
                "the spool's writer has stopped",
            ))),
        }
    }
}

impl StoreError {
    /// The writer thread could not be started.
    pub fn thread(e: std::io::Error) -> Self {
        Self {
            what: "start the writer thread",
            source: Box::new(redb::Error::Io(e)),
        }
    }
}

fn failed<E: Into<redb::Error>>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError {
        what,
        source: Box::new(e.into()),
    }
}

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Spooled,
    Dead,
}

impl Table {
    fn definition(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Table::Spooled => SPOOLED,
            Table::Dead => DEAD,
        }
    }
}

/// The spool's database.
pub struct Store {
    db: Database,
    /// The next sequence number, shared by both tables.
    next: AtomicU64,
}

impl Store {
    /// Opens (creating when missing) the database in `dir`; a database left
    /// by a crash is repaired to its last commit.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError {
            what: "create the spool directory",
            source: Box::new(redb::Error::Io(e)),
        })?;
        let db = Database::create(dir.join(FILE)).map_err(failed("open the database"))?;
        let txn = db.begin_write().map_err(failed("begin"))?;
        let mut last = 0;
        for table in [SPOOLED, DEAD] {
            let t = txn.open_table(table).map_err(failed("open a table"))?;
            let newest = t.last().map_err(failed("read"))?.map(|(k, _)| k.value());
            last = last.max(newest.unwrap_or(0));
        }
        txn.commit().map_err(failed("commit"))?;
        Ok(Self {
            db,
            next: AtomicU64::new(last + 1),
        })
    }

    /// Appends `records` to `table` in order, in one durable commit; their
    /// sequence numbers.
    pub fn append(&self, table: Table, records: &[&[u8]]) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_write().map_err(failed("begin"))?;
        let mut ids = Vec::with_capacity(records.len());
        {
            let mut t = txn.open_table(table.definition()).map_err(failed("open"))?;
            for record in records {
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                t.insert(id, *record).map_err(failed("insert"))?;
                ids.push(id);
            }
        }
        txn.commit().map_err(failed("commit"))?;
        Ok(ids)
    }

    /// Up to `limit` records of `table` after `after`, oldest first.
    pub fn read(
        &self,
        table: Table,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(failed("begin"))?;
        let t = txn.open_table(table.definition()).map_err(failed("open"))?;
        let range = t.range(after.saturating_add(1)..).map_err(failed("read"))?;
        range
            .take(limit)
            .map(|entry| {
                let (k, v) = entry.map_err(failed("read"))?;
                Ok((k.value(), v.value().to_vec()))
            })
            .collect()
    }

    /// Removes `ids` from `table` (absent ones are skipped), in one durable
    /// commit; how many were there.
    pub fn remove(&self, table: Table, ids: &[u64]) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(failed("begin"))?;
        let mut removed = 0;
        {
            let mut t = txn.open_table(table.definition()).map_err(failed("open"))?;
            for id in ids {
                removed += usize::from(t.remove(id).map_err(failed("remove"))?.is_some());
            }
        }
        txn.commit().map_err(failed("commit"))?;
        Ok(removed)
    }

    /// In one durable commit: removes `done` from `spooled`, and moves
    /// `refused` from `spooled` to `dead` as the records given (the
    /// originals with the broker's reason).
    pub fn settle(&self, done: &[u64], refused: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(failed("begin"))?;
        {
            let mut spooled = txn.open_table(SPOOLED).map_err(failed("open"))?;
            for id in done.iter().chain(refused.iter().map(|(id, _)| id)) {
                spooled.remove(id).map_err(failed("remove"))?;
            }
            let mut dead = txn.open_table(DEAD).map_err(failed("open"))?;
            for (id, record) in refused {
                dead.insert(id, record.as_slice())
                    .map_err(failed("insert"))?;
            }
        }
        txn.commit().map_err(failed("commit"))
    }

    /// Moves dead records `ids` back to the end of `spooled` as `records`
    /// (each possibly corrected), in one durable commit; their new sequence
    /// numbers.
    pub fn revive(&self, ids: &[u64], records: &[&[u8]]) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_write().map_err(failed("begin"))?;
        let mut new = Vec::with_capacity(records.len());
        {
            let mut dead = txn.open_table(DEAD).map_err(failed("open"))?;
            for id in ids {
                dead.remove(id).map_err(failed("remove"))?;
            }
            let mut spooled = txn.open_table(SPOOLED).map_err(failed("open"))?;
            for record in records {
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                spooled.insert(id, *record).map_err(failed("insert"))?;
                new.push(id);
            }
        }
        txn.commit().map_err(failed("commit"))?;
        Ok(new)
    }

    /// How many records `table` holds, and their bytes.
    pub fn size(&self, table: Table) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read().map_err(failed("begin"))?;
        let t = txn.open_table(table.definition()).map_err(failed("open"))?;
        let count = t.len().map_err(failed("count"))?;
        let mut bytes = 0u64;
        for entry in t.iter().map_err(failed("read"))? {
            let (_, v) = entry.map_err(failed("read"))?;
            bytes += v.value().len() as u64;
        }
        Ok((count, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "warren-spool-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn appends_in_order_and_survives_reopening() {
        let d = dir("order");
        let store = Store::open(&d).unwrap();
        let ids = store.append(Table::Spooled, &[b"a", b"b", b"c"]).unwrap();
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        drop(store);
        let store = Store::open(&d).unwrap();
        let read = store.read(Table::Spooled, 0, 10).unwrap();
        let bodies: Vec<&[u8]> = read.iter().map(|(_, v)| v.as_slice()).collect();
        assert_eq!(bodies, [b"a".as_slice(), b"b", b"c"]);
        // Sequence numbers keep growing after a reopen.
        let more = store.append(Table::Spooled, &[b"d"]).unwrap();
        assert!(more[0] > ids[2]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn removes_and_buries_only_what_is_named() {
        let d = dir("remove");
        let store = Store::open(&d).unwrap();
        let ids = store
            .append(Table::Spooled, &[b"1", b"22", b"333"])
            .unwrap();
        assert_eq!(store.remove(Table::Spooled, &[ids[0], 9_999]).unwrap(), 1);
        store
            .settle(&[], &[(ids[1], b"22 refused".to_vec())])
            .unwrap();
        assert_eq!(store.size(Table::Spooled).unwrap(), (1, 3));
        assert_eq!(store.size(Table::Dead).unwrap(), (1, 10));
        let after_first = store.read(Table::Spooled, ids[1], 10).unwrap();
        assert_eq!(after_first, vec![(ids[2], b"333".to_vec())]);
        let revived = store.revive(&[ids[1]], &[b"22 fixed"]).unwrap();
        assert!(revived[0] > ids[2], "a revived record goes to the end");
        assert_eq!(store.size(Table::Dead).unwrap(), (0, 0));
        assert_eq!(store.size(Table::Spooled).unwrap(), (2, 11));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
