//! The daemon's memory: profiles, containers and the kernel bookkeeping that makes restarts lose
//! nothing, in one SQLite database (`<state-dir>/capprof.db`).
//!
//! Why SQLite (through rusqlite, with the bundled library): it is the most widely deployed and
//! tested embedded database; a whole poll's worth of changes commits in one transaction; in WAL
//! mode a committed transaction survives the process being killed at any moment (it is in the
//! log before `COMMIT` returns); and the file can be inspected with the `sqlite3` tool when a
//! user wants to know what capprof stored. The bundled build means no system library version to
//! depend on. redb would also do, but offers no ad-hoc inspection and its format changed across
//! major versions.
//!
//! Exactly-once accounting: the kernel's counts are cumulative for as long as the pinned tracer
//! lives. For every kernel key the store remembers how much of that count has already been
//! folded into profiles (`kernel_keys.attributed`), in the same transaction as the profile
//! update, so a daemon killed between polls re-folds exactly the difference when it comes back.

use std::{collections::HashMap, path::Path};

use capprof_common::CheckKey;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::attach::AttachChoice;
use crate::profile::{
    EntryCallSite, EntryKey, EntryVerdict, Profile, ProfileEntry, Subject, SubjectInfo,
};

/// The database file inside the state directory.
pub const DATABASE_FILE: &str = "capprof.db";

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kernel_keys (
    cgroup_id INTEGER NOT NULL, cap INTEGER NOT NULL, verdict INTEGER NOT NULL,
    syscall_nr INTEGER NOT NULL, flags INTEGER NOT NULL,
    attributed INTEGER NOT NULL,
    PRIMARY KEY (cgroup_id, cap, verdict, syscall_nr, flags)
);
CREATE TABLE IF NOT EXISTS kernel_call_sites (
    cgroup_id INTEGER NOT NULL, cap INTEGER NOT NULL, verdict INTEGER NOT NULL,
    syscall_nr INTEGER NOT NULL, flags INTEGER NOT NULL,
    stack TEXT NOT NULL, example TEXT NOT NULL,
    PRIMARY KEY (cgroup_id, cap, verdict, syscall_nr, flags, stack)
);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, image TEXT NOT NULL,
    compose_project TEXT, compose_service TEXT,
    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL, exited_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS cgroups (
    cgroup_id INTEGER PRIMARY KEY, container_id TEXT, first_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cgroup_names (
    cgroup_id INTEGER PRIMARY KEY, name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS forgotten_cgroups (cgroup_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS subjects (
    subject TEXT PRIMARY KEY, first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subject_containers (
    subject TEXT NOT NULL, container_id TEXT NOT NULL, PRIMARY KEY (subject, container_id)
);
CREATE TABLE IF NOT EXISTS entries (
    subject TEXT NOT NULL, cap INTEGER NOT NULL, verdict INTEGER NOT NULL,
    syscall_nr INTEGER NOT NULL, flags INTEGER NOT NULL,
    count INTEGER NOT NULL, first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (subject, cap, verdict, syscall_nr, flags)
);
CREATE TABLE IF NOT EXISTS entry_sites (
    subject TEXT NOT NULL, cap INTEGER NOT NULL, verdict INTEGER NOT NULL,
    syscall_nr INTEGER NOT NULL, flags INTEGER NOT NULL,
    stack TEXT NOT NULL, example TEXT NOT NULL,
    PRIMARY KEY (subject, cap, verdict, syscall_nr, flags, stack)
);
";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the database at {path} failed: {source}")]
    Database {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the database at {path} has schema version {found}, newer than this capprof ({SCHEMA_VERSION}); upgrade capprof or use another --state-dir"
    )]
    NewerSchema { path: String, found: i64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// A container as the store remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub image: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub exited_at_ms: Option<i64>,
}

/// Checks to add to one subject's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryDelta {
    pub subject: Subject,
    pub key: EntryKey,
    /// Checks to add.
    pub delta: u64,
    pub seen_at_ms: i64,
    /// Call sites to remember (already-known ones are ignored).
    pub call_sites: Vec<EntryCallSite>,
}

/// Everything one poll changes, written in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// New attributed totals per kernel key.
    pub attributed: Vec<(CheckKey, u64)>,
    /// Call sites the kernel reported, remembered before attribution.
    pub kernel_call_sites: Vec<(CheckKey, EntryCallSite)>,
    pub containers: Vec<ContainerRecord>,
    /// cgroup id → the cgroup directory's name, as the kernel reported it.
    pub cgroup_names: Vec<(u64, String)>,
    /// cgroup id → container id (`None`: the host).
    pub cgroups: Vec<(u64, Option<String>, i64)>,
    /// (subject, container id) memberships, for merged subjects.
    pub memberships: Vec<(Subject, String)>,
    pub entries: Vec<EntryDelta>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        *self == Batch::default()
    }
}

/// The SQLite database.
#[derive(Debug)]
pub struct Store {
    connection: Connection,
    path: String,
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/capprof.db`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join(DATABASE_FILE);
        let display = path.display().to_string();
        let connection = Connection::open(&path).map_err(|source| StoreError::Database {
            path: display.clone(),
            source,
        })?;
        Self::initialise(connection, display)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let connection = Connection::open_in_memory().map_err(|source| StoreError::Database {
            path: ":memory:".into(),
            source,
        })?;
        Self::initialise(connection, ":memory:".into())
    }

    fn initialise(connection: Connection, path: String) -> Result<Self, StoreError> {
        let store = Self { connection, path };
        let wrap = |path: &str| {
            let path = path.to_owned();
            move |source| StoreError::Database {
                path: path.clone(),
                source,
            }
        };
        store
            .connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap(&store.path))?;
        store
            .connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(wrap(&store.path))?;
        store
            .connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(wrap(&store.path))?;
        store
            .connection
            .execute_batch(SCHEMA)
            .map_err(wrap(&store.path))?;
        let version = store.meta("schema_version")?;
        match version.map(|v| v.parse::<i64>()) {
            None => store.set_meta("schema_version", &SCHEMA_VERSION.to_string())?,
            Some(Ok(found)) if found > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    path: store.path.clone(),
                    found,
                });
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                return Err(StoreError::Corrupt("schema_version is not a number".into()));
            }
        }
        Ok(store)
    }

    fn db_error(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Database {
            path: self.path.clone(),
            source,
        }
    }

    /// How much of each kernel key's count is already in profiles.
    pub fn attributed_counts(&self) -> Result<HashMap<CheckKey, u64>, StoreError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT cgroup_id, cap, verdict, syscall_nr, flags, attributed FROM kernel_keys",
            )
            .map_err(self.db_error())?;
        let rows = statement
            .query_map([], |row| {
                Ok((read_check_key(row, 0)?, row.get::<_, i64>(5)? as u64))
            })
            .map_err(self.db_error())?;
        rows.collect::<Result<_, _>>().map_err(self.db_error())
    }

    /// The call sites the kernel reported, for restoring a resumed tracer's table.
    pub fn kernel_call_sites(&self) -> Result<Vec<(CheckKey, EntryCallSite)>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT cgroup_id, cap, verdict, syscall_nr, flags, stack, example FROM kernel_call_sites")
            .map_err(self.db_error())?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    read_check_key(row, 0)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                ))
            })
            .map_err(self.db_error())?;
        let mut sites = Vec::new();
        for row in rows {
            let (key, stack, example) = row.map_err(self.db_error())?;
            sites.push((key, decode_site(&stack, &example)?));
        }
        Ok(sites)
    }

    /// A value of the `meta` table.
    fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.connection
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()
            .map_err(self.db_error())
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.connection
            .execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [name, value],
            )
            .map_err(self.db_error())?;
        Ok(())
    }

    /// Why the pinned tracer's attach path was chosen, as the daemon that loaded it recorded.
    pub fn attach_choice(&self) -> Result<Option<AttachChoice>, StoreError> {
        let json = self.meta("attach_choice")?;
        // Only an explanation: one that cannot be read is dropped, not a reason to stop.
        Ok(json.and_then(|json| {
            serde_json::from_str(&json)
                .inspect_err(|error| tracing::warn!(%error, "ignoring the recorded attach choice"))
                .ok()
        }))
    }

    /// Records why a freshly loaded tracer uses its attach path, for the daemons that resume it.
    pub fn set_attach_choice(&mut self, choice: &AttachChoice) -> Result<(), StoreError> {
        let json = serde_json::to_string(choice).expect("modes and strings always serialise");
        self.set_meta("attach_choice", &json)
    }

    /// Forgets the kernel bookkeeping: a freshly loaded tracer counts from zero again.
    pub fn reset_kernel_accounting(&mut self) -> Result<(), StoreError> {
        self.connection
            .execute_batch("DELETE FROM kernel_keys; DELETE FROM kernel_call_sites; DELETE FROM forgotten_cgroups;")
            .map_err(self.db_error())
    }

    /// The container each known cgroup id was attributed to (`None`: the host).
    pub fn cgroup_attributions(&self) -> Result<HashMap<u64, Option<String>>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT cgroup_id, container_id FROM cgroups")
            .map_err(self.db_error())?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, Option<String>>(1)?,
                ))
            })
            .map_err(self.db_error())?;
        rows.collect::<Result<_, _>>().map_err(self.db_error())
    }

    /// Records cgroups whose kernel entries were freed (their checks are all in profiles): a
    /// resumed tracer may still hold hot slots of theirs, which must not be folded again.
    pub fn forget_kernel_cgroups(
        &mut self,
        cgroups: &std::collections::HashSet<u64>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let wrap = move |source| StoreError::Database {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(&wrap)?;
        for cgroup in cgroups {
            let id = *cgroup as i64;
            transaction
                .execute(
                    "INSERT OR IGNORE INTO forgotten_cgroups (cgroup_id) VALUES (?1)",
                    [id],
                )
                .map_err(&wrap)?;
            transaction
                .execute("DELETE FROM kernel_keys WHERE cgroup_id = ?1", [id])
                .map_err(&wrap)?;
            transaction
                .execute("DELETE FROM kernel_call_sites WHERE cgroup_id = ?1", [id])
                .map_err(&wrap)?;
        }
        transaction.commit().map_err(&wrap)
    }

    /// The cgroups [`Store::forget_kernel_cgroups`] recorded.
    pub fn forgotten_cgroups(&self) -> Result<std::collections::HashSet<u64>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT cgroup_id FROM forgotten_cgroups")
            .map_err(self.db_error())?;
        let rows = statement
            .query_map([], |row| Ok(row.get::<_, i64>(0)? as u64))
            .map_err(self.db_error())?;
        rows.collect::<Result<_, _>>().map_err(self.db_error())
    }

    /// The cgroup directory names the kernel reported, by cgroup id.
    pub fn cgroup_names(&self) -> Result<HashMap<u64, String>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT cgroup_id, name FROM cgroup_names")
            .map_err(self.db_error())?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, String>(1)?))
            })
            .map_err(self.db_error())?;
        rows.collect::<Result<_, _>>().map_err(self.db_error())
    }

    /// Writes a batch atomically.
    pub fn apply(&mut self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let wrap = move |source| StoreError::Database {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(&wrap)?;
        write_batch(&transaction, batch).map_err(&wrap)?;
        transaction.commit().map_err(&wrap)
    }

    /// Records that a container stopped (the first time only), or runs again (`None`). Containers
    /// the store has not seen yet are left to the next fold.
    pub fn set_container_exit(
        &mut self,
        id: &str,
        exited_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let sql = match exited_at_ms {
            Some(_) => {
                "UPDATE containers SET exited_at_ms = COALESCE(exited_at_ms, ?2) WHERE id = ?1"
            }
            None => "UPDATE containers SET exited_at_ms = ?2 WHERE id = ?1",
        };
        self.connection
            .execute(sql, params![id, exited_at_ms])
            .map_err(self.db_error())?;
        Ok(())
    }

    /// Every container the store remembers.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, name, image, compose_project, compose_service, first_seen_ms, last_seen_ms, exited_at_ms
                 FROM containers ORDER BY last_seen_ms DESC",
            )
            .map_err(self.db_error())?;
        let rows = statement
            .query_map([], |row| {
                Ok(ContainerRecord {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    image: row.get(2)?,
                    compose_project: row.get(3)?,
                    compose_service: row.get(4)?,
                    first_seen_ms: row.get(5)?,
                    last_seen_ms: row.get(6)?,
                    exited_at_ms: row.get(7)?,
                })
            })
            .map_err(self.db_error())?;
        rows.collect::<Result<_, _>>().map_err(self.db_error())
    }

    /// Every subject with a profile.
    pub fn subjects(&self) -> Result<Vec<Subject>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT subject FROM subjects ORDER BY subject")
            .map_err(self.db_error())?;
        let keys = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(self.db_error())?;
        let mut subjects = Vec::new();
        for key in keys {
            let key = key.map_err(self.db_error())?;
            subjects.push(
                Subject::from_storage_key(&key)
                    .ok_or_else(|| StoreError::Corrupt(format!("subject `{key}`")))?,
            );
        }
        Ok(subjects)
    }

    /// A subject's profile, or `None` when nothing was recorded for it.
    pub fn profile(&self, subject: &Subject) -> Result<Option<Profile>, StoreError> {
        let key = subject.storage_key();
        let times: Option<(i64, i64)> = self
            .connection
            .query_row(
                "SELECT first_seen_ms, last_seen_ms FROM subjects WHERE subject = ?1",
                [&key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(self.db_error())?;
        let Some((first_seen_ms, last_seen_ms)) = times else {
            return Ok(None);
        };
        let info = self.subject_info(&key, first_seen_ms, last_seen_ms)?;

        let mut statement = self
            .connection
            .prepare(
                "SELECT cap, verdict, syscall_nr, flags, count, first_seen_ms, last_seen_ms FROM entries
                 WHERE subject = ?1 ORDER BY cap, verdict, syscall_nr, flags",
            )
            .map_err(self.db_error())?;
        let rows = statement
            .query_map([&key], |row| {
                Ok((
                    read_entry_key(row, 0)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, i64>(6)?,
                ))
            })
            .map_err(self.db_error())?;
        let mut entries = Vec::new();
        for row in rows {
            let (entry_key, count, first_seen_ms, last_seen_ms) = row.map_err(self.db_error())?;
            entries.push(ProfileEntry {
                key: entry_key,
                count: count as u64,
                first_seen_ms,
                last_seen_ms,
                call_sites: Vec::new(),
            });
        }
        let mut statement = self
            .connection
            .prepare("SELECT cap, verdict, syscall_nr, flags, stack, example FROM entry_sites WHERE subject = ?1")
            .map_err(self.db_error())?;
        let rows = statement
            .query_map([&key], |row| {
                Ok((
                    read_entry_key(row, 0)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .map_err(self.db_error())?;
        for row in rows {
            let (entry_key, stack, example) = row.map_err(self.db_error())?;
            if let Some(entry) = entries.iter_mut().find(|entry| entry.key == entry_key) {
                entry.call_sites.push(decode_site(&stack, &example)?);
            }
        }
        for entry in &mut entries {
            entry.call_sites.sort_by_key(|site| site.example.seen_at_ms);
        }
        Ok(Some(Profile {
            subject: subject.clone(),
            info,
            entries,
        }))
    }

    fn subject_info(
        &self,
        key: &str,
        first_seen_ms: i64,
        last_seen_ms: i64,
    ) -> Result<SubjectInfo, StoreError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT c.id, c.name, c.image, c.compose_project, c.compose_service, c.exited_at_ms
                 FROM subject_containers s JOIN containers c ON c.id = s.container_id
                 WHERE s.subject = ?1 ORDER BY c.last_seen_ms",
            )
            .map_err(self.db_error())?;
        let rows = statement
            .query_map([key], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, Option<i64>>(5)?,
                ))
            })
            .map_err(self.db_error())?;
        let mut info = SubjectInfo {
            first_seen_ms,
            last_seen_ms,
            ..Default::default()
        };
        for row in rows {
            let (id, name, image, project, service, exited_at_ms) = row.map_err(self.db_error())?;
            info.containers.push(id);
            if !info.names.contains(&name) {
                info.names.push(name);
            }
            if !info.images.contains(&image) {
                info.images.push(image);
            }
            info.compose_project = info.compose_project.or(project);
            info.compose_service = info.compose_service.or(service);
            info.exited_at_ms = exited_at_ms;
        }
        Ok(info)
    }

    /// Deletes a subject's profile; returns whether there was one.
    pub fn reset(&mut self, subject: &Subject) -> Result<bool, StoreError> {
        let key = subject.storage_key();
        let path = self.path.clone();
        let wrap = move |source| StoreError::Database {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(&wrap)?;
        let removed = transaction
            .execute("DELETE FROM subjects WHERE subject = ?1", [&key])
            .map_err(&wrap)?;
        for table in ["entries", "entry_sites", "subject_containers"] {
            transaction
                .execute(&format!("DELETE FROM {table} WHERE subject = ?1"), [&key])
                .map_err(&wrap)?;
        }
        transaction.commit().map_err(&wrap)?;
        Ok(removed > 0)
    }

    /// Removes the profiles of containers that exited before `cutoff_ms` (merged service and
    /// image profiles stay until reset). Returns how many containers were forgotten.
    pub fn expire_containers(&mut self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let expired: Vec<String> = {
            let mut statement = self
                .connection
                .prepare("SELECT id FROM containers WHERE exited_at_ms IS NOT NULL AND exited_at_ms < ?1")
                .map_err(self.db_error())?;
            let ids = statement
                .query_map([cutoff_ms], |row| row.get(0))
                .map_err(self.db_error())?;
            ids.collect::<Result<_, _>>().map_err(self.db_error())?
        };
        for id in &expired {
            self.reset(&Subject::Container { id: id.clone() })?;
            self.connection
                .execute(
                    "DELETE FROM subject_containers WHERE container_id = ?1",
                    [id],
                )
                .map_err(self.db_error())?;
            self.connection
                .execute("DELETE FROM containers WHERE id = ?1", [id])
                .map_err(self.db_error())?;
        }
        Ok(expired.len())
    }
}

fn write_batch(transaction: &Transaction<'_>, batch: &Batch) -> rusqlite::Result<()> {
    for (key, attributed) in &batch.attributed {
        transaction.execute(
            "INSERT INTO kernel_keys (cgroup_id, cap, verdict, syscall_nr, flags, attributed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT DO UPDATE SET attributed = excluded.attributed",
            params![key.cgroup_id as i64, key.cap, key.verdict, key.syscall_nr, key.flags, *attributed as i64],
        )?;
    }
    for (key, site) in &batch.kernel_call_sites {
        let (stack, example) = encode_site(site);
        transaction.execute(
            "INSERT OR IGNORE INTO kernel_call_sites (cgroup_id, cap, verdict, syscall_nr, flags, stack, example)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![key.cgroup_id as i64, key.cap, key.verdict, key.syscall_nr, key.flags, stack, example],
        )?;
    }
    for container in &batch.containers {
        transaction.execute(
            "INSERT INTO containers (id, name, image, compose_project, compose_service, first_seen_ms, last_seen_ms, exited_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT DO UPDATE SET name = excluded.name, image = excluded.image,
                compose_project = excluded.compose_project, compose_service = excluded.compose_service,
                first_seen_ms = MIN(first_seen_ms, excluded.first_seen_ms),
                last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms),
                exited_at_ms = CASE WHEN excluded.exited_at_ms IS NULL THEN NULL
                                    ELSE COALESCE(containers.exited_at_ms, excluded.exited_at_ms) END",
            params![
                container.id,
                container.name,
                container.image,
                container.compose_project,
                container.compose_service,
                container.first_seen_ms,
                container.last_seen_ms,
                container.exited_at_ms
            ],
        )?;
    }
    for (cgroup_id, name) in &batch.cgroup_names {
        transaction.execute(
            "INSERT OR IGNORE INTO cgroup_names (cgroup_id, name) VALUES (?1, ?2)",
            params![*cgroup_id as i64, name],
        )?;
    }
    for (cgroup_id, container_id, seen_ms) in &batch.cgroups {
        transaction.execute(
            "INSERT INTO cgroups (cgroup_id, container_id, first_seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT DO UPDATE SET container_id = excluded.container_id",
            params![*cgroup_id as i64, container_id, seen_ms],
        )?;
    }
    for (subject, container_id) in &batch.memberships {
        transaction.execute(
            "INSERT OR IGNORE INTO subject_containers (subject, container_id) VALUES (?1, ?2)",
            params![subject.storage_key(), container_id],
        )?;
    }
    for delta in &batch.entries {
        let subject = delta.subject.storage_key();
        transaction.execute(
            "INSERT INTO subjects (subject, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?2)
             ON CONFLICT DO UPDATE SET first_seen_ms = MIN(first_seen_ms, excluded.first_seen_ms),
                last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
            params![subject, delta.seen_at_ms],
        )?;
        let (cap, verdict, syscall_nr, flags) = entry_key_columns(&delta.key);
        transaction.execute(
            "INSERT INTO entries (subject, cap, verdict, syscall_nr, flags, count, first_seen_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT DO UPDATE SET count = count + excluded.count,
                first_seen_ms = MIN(first_seen_ms, excluded.first_seen_ms),
                last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
            params![subject, cap, verdict, syscall_nr, flags, delta.delta as i64, delta.seen_at_ms],
        )?;
        for site in &delta.call_sites {
            let (stack, example) = encode_site(site);
            transaction.execute(
                "INSERT OR IGNORE INTO entry_sites (subject, cap, verdict, syscall_nr, flags, stack, example)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![subject, cap, verdict, syscall_nr, flags, stack, example],
            )?;
        }
    }
    Ok(())
}

fn read_check_key(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<CheckKey> {
    Ok(CheckKey {
        cgroup_id: row.get::<_, i64>(first)? as u64,
        cap: row.get(first + 1)?,
        verdict: row.get(first + 2)?,
        syscall_nr: row.get(first + 3)?,
        flags: row.get(first + 4)?,
    })
}

fn entry_key_columns(key: &EntryKey) -> (u32, u32, i64, u32) {
    let verdict = match key.verdict {
        EntryVerdict::Granted => 0,
        EntryVerdict::Denied => 1,
    };
    (
        key.cap,
        verdict,
        key.syscall_nr.map_or(-1, i64::from),
        key.flags,
    )
}

fn read_entry_key(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<EntryKey> {
    let verdict: u32 = row.get(first + 1)?;
    let syscall_nr: i64 = row.get(first + 2)?;
    Ok(EntryKey {
        cap: row.get(first)?,
        verdict: if verdict == 0 {
            EntryVerdict::Granted
        } else {
            EntryVerdict::Denied
        },
        syscall_nr: u32::try_from(syscall_nr).ok(),
        flags: row.get(first + 3)?,
    })
}

fn encode_site(site: &EntryCallSite) -> (String, String) {
    (
        serde_json::to_string(&site.stack).expect("strings serialize"),
        serde_json::to_string(&site.example).expect("examples serialize"),
    )
}

fn decode_site(stack: &str, example: &str) -> Result<EntryCallSite, StoreError> {
    Ok(EntryCallSite {
        stack: serde_json::from_str(stack)
            .map_err(|error| StoreError::Corrupt(format!("stack: {error}")))?,
        example: serde_json::from_str(example)
            .map_err(|error| StoreError::Corrupt(format!("example: {error}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{call_site, example};

    fn site(comm: &str, at: i64) -> EntryCallSite {
        call_site(&["cap_capable", "chown_common"], example(comm, 5, at))
    }

    fn chown_key() -> EntryKey {
        EntryKey {
            cap: 0,
            verdict: EntryVerdict::Granted,
            syscall_nr: Some(260),
            flags: 0,
        }
    }

    fn container(id: &str, exited_at_ms: Option<i64>) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: format!("name-{id}"),
            image: "busybox".into(),
            compose_project: Some("shop".into()),
            compose_service: Some("web".into()),
            first_seen_ms: 10,
            last_seen_ms: 20,
            exited_at_ms,
        }
    }

    #[test]
    fn batches_accumulate_into_profiles() {
        let mut store = Store::open_in_memory().unwrap();
        let service = Subject::Service {
            project: "shop".into(),
            service: "web".into(),
        };
        let kernel_key = CheckKey {
            cgroup_id: 77,
            cap: 0,
            verdict: 0,
            syscall_nr: 260,
            flags: 0,
        };
        for (id, count, at) in [("a", 3, 100), ("b", 4, 200)] {
            let container_subject = Subject::Container { id: id.into() };
            store
                .apply(&Batch {
                    attributed: vec![(kernel_key, count)],
                    kernel_call_sites: vec![(kernel_key, site("chown", at))],
                    containers: vec![container(id, None)],
                    cgroup_names: vec![(77, format!("{id}-cgroup"))],
                    cgroups: vec![(77, Some(id.into()), at)],
                    memberships: vec![
                        (container_subject.clone(), id.into()),
                        (service.clone(), id.into()),
                    ],
                    entries: [container_subject, service.clone()]
                        .into_iter()
                        .map(|subject| EntryDelta {
                            subject,
                            key: chown_key(),
                            delta: count,
                            seen_at_ms: at,
                            call_sites: vec![site("chown", at)],
                        })
                        .collect(),
                })
                .unwrap();
        }
        let merged = store.profile(&service).unwrap().unwrap();
        assert_eq!(merged.entries.len(), 1);
        assert_eq!(merged.entries[0].count, 7);
        assert_eq!(merged.entries[0].first_seen_ms, 100);
        assert_eq!(merged.entries[0].last_seen_ms, 200);
        assert_eq!(
            merged.entries[0].call_sites.len(),
            1,
            "same stack is stored once"
        );
        assert_eq!(merged.info.containers, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(merged.info.compose_service.as_deref(), Some("web"));
        assert_eq!(
            store
                .profile(&Subject::Container { id: "a".into() })
                .unwrap()
                .unwrap()
                .total_checks(),
            3
        );
        assert_eq!(store.attributed_counts().unwrap()[&kernel_key], 4);
        assert_eq!(store.kernel_call_sites().unwrap().len(), 1);
        assert_eq!(store.cgroup_attributions().unwrap()[&77], Some("b".into()));
        assert_eq!(
            store.cgroup_names().unwrap()[&77],
            "a-cgroup",
            "the first name reported stays"
        );
        assert_eq!(store.profile(&Subject::Host).unwrap(), None);
    }

    #[test]
    fn forgotten_cgroups_lose_their_kernel_bookkeeping_until_a_fresh_tracer() {
        let mut store = Store::open_in_memory().unwrap();
        let key = CheckKey {
            cgroup_id: 5,
            cap: 0,
            verdict: 0,
            syscall_nr: 92,
            flags: 0,
        };
        let other = CheckKey {
            cgroup_id: 6,
            ..key
        };
        store
            .apply(&Batch {
                attributed: vec![(key, 3), (other, 1)],
                kernel_call_sites: vec![(key, site("chown", 1))],
                ..Default::default()
            })
            .unwrap();
        store
            .forget_kernel_cgroups(&std::collections::HashSet::from([5]))
            .unwrap();
        assert_eq!(
            store.attributed_counts().unwrap(),
            HashMap::from([(other, 1)])
        );
        assert!(store.kernel_call_sites().unwrap().is_empty());
        assert_eq!(
            store.forgotten_cgroups().unwrap(),
            std::collections::HashSet::from([5])
        );
        store.reset_kernel_accounting().unwrap();
        assert!(store.forgotten_cgroups().unwrap().is_empty());
    }

    #[test]
    fn a_container_keeps_its_first_exit_time_until_it_runs_again() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .apply(&Batch {
                containers: vec![container("c", None)],
                ..Default::default()
            })
            .unwrap();
        store.set_container_exit("c", Some(500)).unwrap();
        store.set_container_exit("c", Some(900)).unwrap();
        store
            .apply(&Batch {
                containers: vec![container("c", Some(1_000))],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(store.containers().unwrap()[0].exited_at_ms, Some(500));
        store.set_container_exit("c", None).unwrap();
        assert_eq!(store.containers().unwrap()[0].exited_at_ms, None);
        store.set_container_exit("unknown", Some(1)).unwrap();
        assert_eq!(store.containers().unwrap().len(), 1);
    }

    #[test]
    fn retention_forgets_exited_containers_but_keeps_merged_profiles() {
        let mut store = Store::open_in_memory().unwrap();
        let service = Subject::Service {
            project: "shop".into(),
            service: "web".into(),
        };
        let old = Subject::Container { id: "old".into() };
        store
            .apply(&Batch {
                containers: vec![container("old", Some(1_000))],
                memberships: vec![(old.clone(), "old".into()), (service.clone(), "old".into())],
                entries: [old.clone(), service.clone()]
                    .into_iter()
                    .map(|subject| EntryDelta {
                        subject,
                        key: chown_key(),
                        delta: 1,
                        seen_at_ms: 500,
                        call_sites: vec![],
                    })
                    .collect(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            store.expire_containers(500).unwrap(),
            0,
            "exited after the cutoff"
        );
        assert_eq!(store.expire_containers(2_000).unwrap(), 1);
        assert_eq!(store.profile(&old).unwrap(), None);
        assert_eq!(store.profile(&service).unwrap().unwrap().total_checks(), 1);
        assert!(store.reset(&service).unwrap());
        assert_eq!(store.profile(&service).unwrap(), None);
        assert!(!store.reset(&service).unwrap());
    }

    #[test]
    fn the_attach_choice_is_kept_replaced_and_a_garbled_one_ignored() {
        use crate::attach::{AttachMode, SkippedMode};
        let mut store = Store::open_in_memory().unwrap();
        assert_eq!(store.attach_choice().unwrap(), None);
        let choice = AttachChoice {
            mode: AttachMode::Tracepoint,
            skipped: vec![SkippedMode {
                mode: AttachMode::Fentry,
                reason: "fexit programs load with EPERM".into(),
            }],
        };
        store.set_attach_choice(&choice).unwrap();
        assert_eq!(store.attach_choice().unwrap(), Some(choice.clone()));
        let fentry = AttachChoice {
            mode: AttachMode::Fentry,
            skipped: vec![],
        };
        store.set_attach_choice(&fentry).unwrap();
        assert_eq!(store.attach_choice().unwrap(), Some(fentry));
        store
            .connection
            .execute(
                "UPDATE meta SET value = '{' WHERE name = 'attach_choice'",
                [],
            )
            .unwrap();
        assert_eq!(store.attach_choice().unwrap(), None);
    }

    #[test]
    fn reopening_keeps_everything_and_refuses_newer_schemas() {
        let dir = std::env::temp_dir().join(format!("capprof-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut store = Store::open(&dir).unwrap();
            store
                .apply(&Batch {
                    entries: vec![EntryDelta {
                        subject: Subject::Host,
                        key: chown_key(),
                        delta: 2,
                        seen_at_ms: 1,
                        call_sites: vec![],
                    }],
                    ..Default::default()
                })
                .unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(
            store
                .profile(&Subject::Host)
                .unwrap()
                .unwrap()
                .total_checks(),
            2
        );
        store
            .connection
            .execute(
                "UPDATE meta SET value = '99' WHERE name = 'schema_version'",
                [],
            )
            .unwrap();
        drop(store);
        assert!(matches!(
            Store::open(&dir),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
