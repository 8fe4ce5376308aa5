//! The store: every chat operation on the database, each checking who asks.
//!
//! Callers are identified before they get here ([`Caller`]); the store decides what
//! that caller may do: only participants read a dialog, only the sender edits, only
//! admins see admin views. SQL is written once with `?` placeholders and numbered for
//! PostgreSQL; entities come back as sea-orm models.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend,
    EntityTrait, SqlErr, Statement, TransactionTrait, Value,
};
use sea_orm_migration::MigratorTrait;
use switchboard_proto::chat::v1 as pb;
use switchboard_proto::common::v1::{PageInfo, PageRequest};
use switchboard_proto::wkt::Timestamp;

use crate::entity::{admin, attachment, complaint, message, relation, translation, user};
use crate::error::Error;
use crate::migration::Migrator;

/// Items per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// The most items one page holds.
pub const MAX_PAGE_SIZE: u64 = 200;
/// The longest user id, client id, language code or attachment id accepted.
pub const MAX_ID_LEN: usize = 128;
/// The longest complaint reason or resolution, in characters.
pub const MAX_REASON_CHARS: usize = 2000;
/// The most words a full-text query may hold.
const MAX_QUERY_WORDS: usize = 16;

const MESSAGE_COLUMNS: &str = "id, client_id, sender, recipient, dialog, text, attachment_id, user_agent, created_at, \
     edited_at, deleted_at, deleted_by, delivered_at, read_at";

/// Who is asking: the user id and whether they are an admin (by claim, config or
/// the admins table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user id.
    pub user: String,
    /// Admin rights.
    pub admin: bool,
}

impl Caller {
    /// A non-admin user.
    pub fn user(id: impl Into<String>) -> Self {
        Self {
            user: id.into(),
            admin: false,
        }
    }

    /// An admin.
    pub fn admin(id: impl Into<String>) -> Self {
        Self {
            user: id.into(),
            admin: true,
        }
    }
}

/// Limits the store enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest text, in characters.
    pub max_text_chars: usize,
    /// How long after sending the sender may edit or delete.
    pub edit_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_chars: 4000,
            edit_window: Duration::from_secs(15 * 60),
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage {
    /// The recipient.
    pub to: String,
    /// The text, stored exactly as given.
    pub text: String,
    /// The sender's idempotency key; empty means "no retries expected".
    pub client_id: String,
    /// An attachment uploaded before, by id.
    pub attachment_id: Option<String>,
    /// The sender's browser.
    pub user_agent: String,
}

/// What sending did.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// The stored message.
    pub message: pb::ChatMessage,
    /// True when the client id was seen before: nothing new was stored.
    pub duplicate: bool,
}

/// Which receipt to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// A device of the recipient got the messages.
    Delivered,
    /// The recipient read them.
    Read,
}

impl Receipt {
    /// `delivered` or `read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }
}

/// What marking receipts changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    /// The ids of the messages newly marked, ascending.
    pub ids: Vec<i64>,
    /// When.
    pub at: i64,
}

/// Which dialogs to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DialogFilter {
    /// Every dialog.
    #[default]
    All,
    /// Dialogs with users marked favourite.
    Favourites,
    /// Dialogs with users one blocked.
    Blocked,
}

impl DialogFilter {
    /// Parses `all`, `favourites`, `blocked` (empty is `all`).
    pub fn parse(value: &str) -> Result<Self, Error> {
        match value {
            "" | "all" => Ok(Self::All),
            "favourites" | "favorites" => Ok(Self::Favourites),
            "blocked" => Ok(Self::Blocked),
            other => Err(Error::InvalidArgument(format!(
                "filter must be all, favourites or blocked, not {other:?}"
            ))),
        }
    }
}

/// A cursor page request, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Items wanted.
    pub size: u64,
    /// Only items with ids below this one.
    pub before: Option<i64>,
}

impl Page {
    /// The first page of `size` items.
    pub fn first(size: u64) -> Self {
        Self { size, before: None }
    }

    /// Parses a proto page request (opaque cursors are decimal ids).
    pub fn from_request(request: Option<&PageRequest>) -> Result<Self, Error> {
        let Some(request) = request else {
            return Ok(Self::first(DEFAULT_PAGE_SIZE));
        };
        let size = match u64::from(request.page_size) {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let before =
            if request.cursor.is_empty() {
                None
            } else {
                Some(
                    request.cursor.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
                        Error::InvalidArgument("page.cursor is not a cursor this service gave".into())
                    })?,
                )
            };
        Ok(Self { size, before })
    }

    fn before_or_max(&self) -> i64 {
        self.before.unwrap_or(i64::MAX)
    }

    /// Cuts the one extra fetched row and builds the page info from the last id.
    fn finish<T>(&self, mut items: Vec<T>, id: impl Fn(&T) -> i64) -> (Vec<T>, PageInfo) {
        let has_more = items.len() as u64 > self.size;
        items.truncate(usize::try_from(self.size).unwrap_or(usize::MAX));
        let next_cursor = match (has_more, items.last()) {
            (true, Some(last)) => id(last).to_string(),
            _ => String::new(),
        };
        (items, PageInfo { next_cursor, has_more })
    }
}

/// A user as the site describes them (the seed's users URL answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserInfo {
    /// The site's user id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Login.
    pub login: String,
    /// Avatar URL.
    pub avatar_url: String,
    /// City.
    pub city: String,
    /// Age.
    pub age: Option<i32>,
    /// Status text.
    pub status: String,
}

/// What a batch send did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Messages stored.
    pub stored: u64,
    /// Messages whose client id was seen before (nothing stored).
    pub duplicates: u64,
}

impl BatchOutcome {
    fn count(&mut self, duplicate: bool) {
        if duplicate {
            self.duplicates += 1;
        } else {
            self.stored += 1;
        }
    }
}

fn clean_user_agent(user_agent: &str) -> String {
    user_agent.chars().filter(|c| !c.is_control()).take(256).collect()
}

/// What erasing a user removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// Messages removed.
    pub messages: u64,
    /// Attachments removed (their blob keys are in `blob_keys`).
    pub attachments: u64,
    /// Blob-store keys to delete.
    pub blob_keys: Vec<String>,
}

/// The chat database.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    limits: Limits,
    admin_ids: HashSet<String>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A proto timestamp from milliseconds.
pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The key both participants share: the two ids in order, JSON-encoded so that no
/// pair of ids can produce another pair's key.
pub fn dialog_key(a: &str, b: &str) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    serde_json::to_string(&[low, high]).unwrap_or_default()
}

/// Parses a message id as callers pass it (decimal).
pub fn parse_message_id(id: &str) -> Result<i64, Error> {
    id.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| Error::InvalidArgument(format!("message id {id:?} is not a message id")))
}

/// Checks a user id (any text the site uses, but bounded and free of control
/// characters).
pub fn check_user_id(field: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    if id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{field} must be at most {MAX_ID_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_text(field: &str, text: &str, max_chars: usize) -> Result<(), Error> {
    // PostgreSQL text cannot hold NUL; refuse it on both backends alike.
    if text.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "{field} must not contain NUL characters"
        )));
    }
    if text.chars().count() > max_chars {
        return Err(Error::ResourceExhausted(format!(
            "{field} is longer than {max_chars} characters"
        )));
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Database(sea_orm::DbErr::Custom(e.to_string()))
}

/// Rewrites `?` placeholders to `$1, $2, ...` (the SQL here has no `?` in literals).
fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// How long a request waits for a database connection (and a new connection for
/// its handshake) before it fails with `Unavailable`: while the database is down,
/// callers get 503 after this long instead of hanging.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Opens the database at `url` (`sqlite://FILE?mode=rwc`, `sqlite::memory:`,
    /// `postgres://...`) and applies pending migrations.
    pub async fn open(url: &str, max_connections: u32, limits: Limits, admin_ids: &[String]) -> Result<Self, Error> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_timeout(ACQUIRE_TIMEOUT)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                // WAL lets readers run beside the one writer; NORMAL sync is durable
                // across application crashes and loses at most the last commits on
                // power loss, the usual trade for a chat.
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(false)
            });
        let db = Database::connect(options).await?;
        Migrator::up(&db, None).await?;
        Ok(Self {
            db,
            limits,
            admin_ids: admin_ids.iter().cloned().collect(),
        })
    }

    /// The connection (for health checks and benchmarks).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The configured limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Begins a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`: the
    /// write lock is taken first (waiting up to the busy timeout), because a deferred
    /// transaction that read before another connection committed cannot become a
    /// writer and fails at once (SQLITE_BUSY_SNAPSHOT, "database is locked").
    async fn begin_write(&self) -> Result<sea_orm::DatabaseTransaction, Error> {
        Ok(self
            .db
            .begin_with_options(sea_orm::TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?)
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        stmt(self.backend(), sql, values)
    }

    async fn messages_where<C: ConnectionTrait>(
        &self,
        conn: &C,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<message::Model>, Error> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages {sql}");
        Ok(message::Entity::find()
            .from_raw_sql(stmt(conn.get_database_backend(), &sql, values))
            .all(conn)
            .await?)
    }

    async fn message_by_id<C: ConnectionTrait>(&self, conn: &C, id: i64) -> Result<Option<message::Model>, Error> {
        Ok(message::Entity::find_by_id(id).one(conn).await?)
    }

    // ---- admins ----

    /// True when `user` is an admin by config or by the management API.
    pub async fn is_admin(&self, user: &str) -> Result<bool, Error> {
        if self.admin_ids.contains(user) {
            return Ok(true);
        }
        Ok(admin::Entity::find_by_id(user.to_owned())
            .one(&self.db)
            .await?
            .is_some())
    }

    /// Replaces the admins set through the management API (configured ids stay).
    pub async fn set_admins(&self, users: &[String]) -> Result<(), Error> {
        for user in users {
            check_user_id("admins[]", user)?;
        }
        let txn = self.begin_write().await?;
        admin::Entity::delete_many().exec(&txn).await?;
        let now = now_ms();
        for user in users.iter().collect::<HashSet<_>>() {
            admin::ActiveModel {
                user_id: Set(user.clone()),
                created_at: Set(now),
            }
            .insert(&txn)
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Admins set through the management API, sorted.
    pub async fn list_admins(&self) -> Result<Vec<String>, Error> {
        let mut ids: Vec<String> = admin::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|a| a.user_id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    // ---- messages ----

    /// Sends one message from `caller`: idempotent per client id, length-limited,
    /// refused when either side blocked the other (admins write anyway).
    pub async fn send(&self, caller: &Caller, new: NewMessage) -> Result<Sent, Error> {
        let txn = self.begin_write().await?;
        let (model, duplicate) = self.send_in(&txn, caller, new, now_ms()).await?;
        txn.commit().await?;
        Ok(Sent {
            message: self.one_to_proto(model, false).await?,
            duplicate,
        })
    }

    /// Sends many messages in one transaction (site imports, bulk senders,
    /// benchmarks), checked like [`Store::send`] but set-wise: one idempotency query,
    /// one block query and one multi-row insert per chunk. The first refusal aborts
    /// the whole batch. Messages with attachments go through the one-by-one path.
    pub async fn send_many(&self, batch: Vec<(Caller, NewMessage)>) -> Result<BatchOutcome, Error> {
        let txn = self.begin_write().await?;
        let now = now_ms();
        let mut outcome = BatchOutcome::default();
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut plain = Vec::with_capacity(batch.len());
        for (caller, mut new) in batch {
            if new.attachment_id.is_some() {
                let (_, duplicate) = self.send_in(&txn, &caller, new, now).await?;
                outcome.count(duplicate);
                continue;
            }
            self.check_new(&caller, &new)?;
            if new.client_id.is_empty() {
                new.client_id = uuid::Uuid::now_v7().to_string();
            }
            if !seen.insert((caller.user.clone(), new.client_id.clone())) {
                outcome.count(true);
                continue;
            }
            plain.push((caller, new));
        }
        for chunk in plain.chunks(500) {
            let backend = txn.get_database_backend();
            let pairs: Vec<Value> = chunk
                .iter()
                .flat_map(|(c, n)| [c.user.clone().into(), n.client_id.clone().into()])
                .collect();
            let rows = txn
                .query_all_raw(stmt(
                    backend,
                    &format!(
                        "SELECT sender, client_id FROM messages WHERE (sender, client_id) IN (VALUES {})",
                        vec!["(?, ?)"; chunk.len()].join(", ")
                    ),
                    pairs,
                ))
                .await?;
            let mut existing: HashSet<(String, String)> = HashSet::new();
            for row in rows {
                existing.insert((row.try_get_by_index(0)?, row.try_get_by_index(1)?));
            }
            let checked: Vec<&(Caller, NewMessage)> = chunk.iter().filter(|(c, _)| !c.admin).collect();
            if !checked.is_empty() {
                let pairs: Vec<Value> = checked
                    .iter()
                    .flat_map(|(c, n)| {
                        [
                            n.to.clone().into(),
                            c.user.clone().into(),
                            c.user.clone().into(),
                            n.to.clone().into(),
                        ]
                    })
                    .collect();
                let blocked = txn
                    .query_all_raw(stmt(
                        backend,
                        &format!(
                            "SELECT owner, other FROM relations WHERE kind = ? AND (owner, other) IN (VALUES {})",
                            vec!["(?, ?)"; checked.len() * 2].join(", ")
                        ),
                        std::iter::once(Value::from(relation::BLOCKED)).chain(pairs).collect(),
                    ))
                    .await?;
                if let Some(row) = blocked.first() {
                    let owner: String = row.try_get_by_index(0)?;
                    let other: String = row.try_get_by_index(1)?;
                    return Err(Error::Blocked(format!(
                        "{owner} has blocked {other}; the batch was not sent"
                    )));
                }
            }
            let models: Vec<message::ActiveModel> = chunk
                .iter()
                .filter(|(c, n)| {
                    let duplicate = existing.contains(&(c.user.clone(), n.client_id.clone()));
                    outcome.count(duplicate);
                    !duplicate
                })
                .map(|(c, n)| message::ActiveModel {
                    client_id: Set(n.client_id.clone()),
                    sender: Set(c.user.clone()),
                    recipient: Set(n.to.clone()),
                    dialog: Set(dialog_key(&c.user, &n.to)),
                    text: Set(n.text.clone()),
                    attachment_id: Set(None),
                    user_agent: Set(clean_user_agent(&n.user_agent)),
                    created_at: Set(now),
                    ..Default::default()
                })
                .collect();
            if !models.is_empty() {
                message::Entity::insert_many(models)
                    .exec_without_returning(&txn)
                    .await?;
            }
        }
        txn.commit().await?;
        Ok(outcome)
    }

    fn check_new(&self, caller: &Caller, new: &NewMessage) -> Result<(), Error> {
        check_user_id("from", &caller.user)?;
        check_user_id("to", &new.to)?;
        if new.to == caller.user {
            return Err(Error::InvalidArgument("a user cannot write to themselves".into()));
        }
        check_text("text", &new.text, self.limits.max_text_chars)?;
        if new.text.trim().is_empty() && new.attachment_id.is_none() {
            return Err(Error::InvalidArgument("a message needs text or an attachment".into()));
        }
        if new.client_id.len() > MAX_ID_LEN || new.client_id.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "client_id must be at most {MAX_ID_LEN} bytes without control characters"
            )));
        }
        Ok(())
    }

    async fn send_in<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        new: NewMessage,
        now: i64,
    ) -> Result<(message::Model, bool), Error> {
        self.check_new(caller, &new)?;
        let user_agent = clean_user_agent(&new.user_agent);
        let client_id = if new.client_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            new.client_id
        };
        if let Some(existing) = self.by_client_id(conn, &caller.user, &client_id).await? {
            return Ok((existing, true));
        }
        if !caller.admin {
            self.check_not_blocked(conn, &caller.user, &new.to).await?;
        }
        if let Some(id) = &new.attachment_id {
            let found = attachment::Entity::find_by_id(id.clone()).one(conn).await?;
            match found {
                Some(a) if a.owner == caller.user && a.message_id.is_none() => {}
                Some(a) if a.owner == caller.user => {
                    return Err(Error::Conflict(format!("attachment {id} was already sent")));
                }
                _ => return Err(Error::NotFound(format!("no attachment {id} of yours"))),
            }
        }
        let insert = message::ActiveModel {
            client_id: Set(client_id.clone()),
            sender: Set(caller.user.clone()),
            recipient: Set(new.to.clone()),
            dialog: Set(dialog_key(&caller.user, &new.to)),
            text: Set(new.text),
            attachment_id: Set(new.attachment_id.clone()),
            user_agent: Set(user_agent),
            created_at: Set(now),
            ..Default::default()
        };
        let model = match insert.insert(conn).await {
            Ok(model) => model,
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                // A concurrent retry with the same client id won the race.
                return match self.by_client_id(conn, &caller.user, &client_id).await? {
                    Some(existing) => Ok((existing, true)),
                    None => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(id) = &new.attachment_id {
            conn.execute_raw(stmt(
                conn.get_database_backend(),
                "UPDATE attachments SET message_id = ? WHERE id = ?",
                vec![model.id.into(), id.clone().into()],
            ))
            .await?;
        }
        Ok((model, false))
    }

    async fn by_client_id<C: ConnectionTrait>(
        &self,
        conn: &C,
        sender: &str,
        client_id: &str,
    ) -> Result<Option<message::Model>, Error> {
        Ok(self
            .messages_where(
                conn,
                "WHERE sender = ? AND client_id = ?",
                vec![sender.into(), client_id.into()],
            )
            .await?
            .into_iter()
            .next())
    }

    async fn check_not_blocked<C: ConnectionTrait>(&self, conn: &C, from: &str, to: &str) -> Result<(), Error> {
        let rows = conn
            .query_all_raw(stmt(
                conn.get_database_backend(),
                "SELECT owner FROM relations WHERE kind = ? AND ((owner = ? AND other = ?) OR (owner = ? AND other = ?))",
                vec![
                    relation::BLOCKED.into(),
                    to.into(),
                    from.into(),
                    from.into(),
                    to.into(),
                ],
            ))
            .await?;
        let owners = rows
            .iter()
            .map(|row| row.try_get_by_index::<String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        if owners.iter().any(|o| o == to) {
            return Err(Error::Blocked(format!(
                "{to} has blocked you; the message was not sent"
            )));
        }
        if !owners.is_empty() {
            return Err(Error::Blocked(format!("you have blocked {to}; unblock them to write")));
        }
        Ok(())
    }

    /// Edits the text of one's own message within the edit window.
    pub async fn edit(&self, caller: &Caller, id: i64, text: String) -> Result<pb::ChatMessage, Error> {
        check_text("text", &text, self.limits.max_text_chars)?;
        let found = self.own_message(caller, id).await?;
        if found.text.trim().is_empty() && text.trim().is_empty() && found.attachment_id.is_none() {
            return Err(Error::InvalidArgument("a message needs text or an attachment".into()));
        }
        if text.trim().is_empty() && found.attachment_id.is_none() {
            return Err(Error::InvalidArgument("a message needs text or an attachment".into()));
        }
        self.check_window(&found, "edited")?;
        let now = now_ms();
        let mut active: message::ActiveModel = found.into();
        active.text = Set(text);
        active.edited_at = Set(Some(now));
        let model = active.update(&self.db).await?;
        self.one_to_proto(model, false).await
    }

    /// Deletes a message: the sender within the edit window, an admin any time. The
    /// row stays as a tombstone (text emptied) so both sides see it went.
    pub async fn delete(&self, caller: &Caller, id: i64) -> Result<pb::ChatMessage, Error> {
        let found = if caller.admin {
            self.message_by_id(&self.db, id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no message {id}")))?
        } else {
            let found = self.own_message(caller, id).await?;
            self.check_window(&found, "deleted")?;
            found
        };
        if found.deleted_at.is_some() {
            return self.one_to_proto(found, caller.admin).await;
        }
        let mut active: message::ActiveModel = found.into();
        active.text = Set(String::new());
        active.deleted_at = Set(Some(now_ms()));
        active.deleted_by = Set(Some(caller.user.clone()));
        let model = active.update(&self.db).await?;
        self.one_to_proto(model, caller.admin).await
    }

    async fn own_message(&self, caller: &Caller, id: i64) -> Result<message::Model, Error> {
        let found = self
            .message_by_id(&self.db, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no message {id}")))?;
        if found.sender == caller.user {
            if found.deleted_at.is_some() {
                return Err(Error::Conflict(format!("message {id} was deleted")));
            }
            Ok(found)
        } else if found.recipient == caller.user {
            Err(Error::PermissionDenied(format!("message {id} is not yours to change")))
        } else {
            Err(Error::NotFound(format!("no message {id}")))
        }
    }

    fn check_window(&self, found: &message::Model, what: &str) -> Result<(), Error> {
        let window = i64::try_from(self.limits.edit_window.as_millis()).unwrap_or(i64::MAX);
        if now_ms().saturating_sub(found.created_at) > window {
            return Err(Error::Conflict(format!(
                "message {} can no longer be {what}: the window of {} has passed",
                found.id,
                humantime_serde::re::humantime::format_duration(self.limits.edit_window)
            )));
        }
        Ok(())
    }

    /// Gets one message the caller may see (a participant, or an admin).
    pub async fn get(&self, caller: &Caller, id: i64) -> Result<message::Model, Error> {
        let found = self
            .message_by_id(&self.db, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no message {id}")))?;
        if caller.admin || found.sender == caller.user || found.recipient == caller.user {
            Ok(found)
        } else {
            Err(Error::NotFound(format!("no message {id}")))
        }
    }

    /// Records receipts for the messages `peer` sent to `caller`, up to `up_to`
    /// (`None`: all of them). Returns the ids newly marked.
    pub async fn mark(&self, caller: &Caller, peer: &str, up_to: Option<i64>, kind: Receipt) -> Result<Marked, Error> {
        check_user_id("peer", peer)?;
        let now = now_ms();
        // Reading implies delivery; the second value fills delivered_at if unset.
        let sql = match kind {
            Receipt::Read => {
                "UPDATE messages SET read_at = ?, delivered_at = COALESCE(delivered_at, ?) \
                 WHERE recipient = ? AND sender = ? AND id <= ? AND read_at IS NULL AND deleted_at IS NULL RETURNING id"
            }
            Receipt::Delivered => {
                "UPDATE messages SET delivered_at = COALESCE(delivered_at, ?, ?) \
                 WHERE recipient = ? AND sender = ? AND id <= ? AND delivered_at IS NULL AND deleted_at IS NULL RETURNING id"
            }
        };
        let rows = self
            .db
            .query_all_raw(self.stmt(
                sql,
                vec![
                    now.into(),
                    now.into(),
                    caller.user.clone().into(),
                    peer.into(),
                    up_to.unwrap_or(i64::MAX).into(),
                ],
            ))
            .await?;
        let mut ids = rows
            .iter()
            .map(|r| r.try_get_by_index::<i64>(0))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        Ok(Marked { ids, at: now })
    }

    /// A page of the dialog between the caller and `peer`, newest first.
    pub async fn history(
        &self,
        caller: &Caller,
        peer: &str,
        page: Page,
    ) -> Result<(Vec<pb::ChatMessage>, PageInfo), Error> {
        check_user_id("peer", peer)?;
        let rows = self
            .messages_where(
                &self.db,
                "WHERE dialog = ? AND id < ? ORDER BY id DESC LIMIT ?",
                vec![
                    dialog_key(&caller.user, peer).into(),
                    page.before_or_max().into(),
                    limit_plus_one(page).into(),
                ],
            )
            .await?;
        let (rows, info) = page.finish(rows, |m| m.id);
        Ok((self.to_proto(rows, false).await?, info))
    }

    /// Unread messages to the caller: from `peer`, or from everyone.
    pub async fn count_unread(&self, caller: &Caller, peer: Option<&str>) -> Result<u32, Error> {
        let (sql, values): (&str, Vec<Value>) = match peer {
            Some(peer) => (
                "SELECT COUNT(*) FROM messages WHERE recipient = ? AND sender = ? AND read_at IS NULL AND deleted_at IS NULL",
                vec![caller.user.clone().into(), peer.into()],
            ),
            None => (
                "SELECT COUNT(*) FROM messages WHERE recipient = ? AND read_at IS NULL AND deleted_at IS NULL",
                vec![caller.user.clone().into()],
            ),
        };
        let row = self.db.query_one_raw(self.stmt(sql, values)).await?;
        let count: i64 = match row {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        };
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// The caller's dialogs, the most recently active first, each with its last
    /// message, unread count and relations. The cursor is the last message id.
    pub async fn dialogs(
        &self,
        caller: &Caller,
        filter: DialogFilter,
        page: Page,
    ) -> Result<(Vec<pb::Dialog>, PageInfo), Error> {
        let me = caller.user.clone();
        let mut values: Vec<Value> = vec![me.clone().into(), me.clone().into()];
        let filter_sql = match filter {
            DialogFilter::All => "",
            DialogFilter::Favourites | DialogFilter::Blocked => {
                values.push(me.clone().into());
                values.push(
                    if filter == DialogFilter::Favourites {
                        relation::FAVOURITE
                    } else {
                        relation::BLOCKED
                    }
                    .into(),
                );
                "WHERE peer IN (SELECT other FROM relations WHERE owner = ? AND kind = ?)"
            }
        };
        values.push(page.before_or_max().into());
        values.push(limit_plus_one(page).into());
        let sql = format!(
            "SELECT peer, MAX(id) AS last_id FROM ( \
               SELECT recipient AS peer, id FROM messages WHERE sender = ? \
               UNION ALL SELECT sender AS peer, id FROM messages WHERE recipient = ? \
             ) AS mine {filter_sql} GROUP BY peer HAVING MAX(id) < ? ORDER BY last_id DESC LIMIT ?"
        );
        let rows = self.db.query_all_raw(self.stmt(&sql, values)).await?;
        let mut pairs = Vec::with_capacity(rows.len());
        for row in rows {
            let peer: String = row.try_get_by_index(0)?;
            let last: i64 = row.try_get_by_index(1)?;
            pairs.push((peer, last));
        }
        let (pairs, info) = page.finish(pairs, |p| p.1);
        if pairs.is_empty() {
            return Ok((Vec::new(), info));
        }
        let ids: Vec<Value> = pairs.iter().map(|p| p.1.into()).collect();
        let last = self
            .messages_where(&self.db, &format!("WHERE id IN ({})", placeholders(ids.len())), ids)
            .await?;
        let last = self.to_proto(last, false).await?;
        let mut last: HashMap<String, pb::ChatMessage> = last.into_iter().map(|m| (m.id.clone(), m)).collect();
        let peers: Vec<Value> = pairs.iter().map(|p| p.0.clone().into()).collect();
        let mut values: Vec<Value> = vec![me.clone().into()];
        values.extend(peers.iter().cloned());
        let unread_rows = self
            .db
            .query_all_raw(self.stmt(
                &format!(
                    "SELECT sender, COUNT(*) FROM messages WHERE recipient = ? AND sender IN ({}) \
                     AND read_at IS NULL AND deleted_at IS NULL GROUP BY sender",
                    placeholders(peers.len())
                ),
                values.clone(),
            ))
            .await?;
        let mut unread: HashMap<String, i64> = HashMap::new();
        for row in unread_rows {
            unread.insert(row.try_get_by_index(0)?, row.try_get_by_index(1)?);
        }
        let relation_rows = self
            .db
            .query_all_raw(self.stmt(
                &format!(
                    "SELECT other, kind FROM relations WHERE owner = ? AND other IN ({})",
                    placeholders(peers.len())
                ),
                values,
            ))
            .await?;
        let mut relations: HashSet<(String, String)> = HashSet::new();
        for row in relation_rows {
            relations.insert((row.try_get_by_index(0)?, row.try_get_by_index(1)?));
        }
        let dialogs = pairs
            .into_iter()
            .map(|(peer, last_id)| pb::Dialog {
                last_message: last.remove(&last_id.to_string()),
                unread: u32::try_from(unread.get(&peer).copied().unwrap_or(0)).unwrap_or(u32::MAX),
                favourite: relations.contains(&(peer.clone(), relation::FAVOURITE.to_owned())),
                blocked: relations.contains(&(peer.clone(), relation::BLOCKED.to_owned())),
                peer,
            })
            .collect();
        Ok((dialogs, info))
    }

    /// Full-text search in the caller's own messages (sent or received), newest first.
    pub async fn search(
        &self,
        caller: &Caller,
        query: &str,
        page: Page,
    ) -> Result<(Vec<pb::ChatMessage>, PageInfo), Error> {
        let words: Vec<&str> = query.split_whitespace().take(MAX_QUERY_WORDS + 1).collect();
        if words.is_empty() {
            return Err(Error::InvalidArgument("query must hold at least one word".into()));
        }
        if words.len() > MAX_QUERY_WORDS || query.len() > 1000 || query.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "query must be at most {MAX_QUERY_WORDS} words and 1000 bytes"
            )));
        }
        let (filter, term) = match self.backend() {
            DbBackend::Postgres => ("text_tsv @@ plainto_tsquery('simple', ?)", words.join(" ")),
            _ => (
                "id IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?)",
                // Each word a quoted phrase: the user's text is never FTS5 syntax.
                words
                    .iter()
                    .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        };
        let rows = self
            .messages_where(
                &self.db,
                &format!(
                    "WHERE {filter} AND (sender = ? OR recipient = ?) AND deleted_at IS NULL AND id < ? \
                     ORDER BY id DESC LIMIT ?"
                ),
                vec![
                    term.into(),
                    caller.user.clone().into(),
                    caller.user.clone().into(),
                    page.before_or_max().into(),
                    limit_plus_one(page).into(),
                ],
            )
            .await?;
        let (rows, info) = page.finish(rows, |m| m.id);
        Ok((self.to_proto(rows, false).await?, info))
    }

    // ---- relations ----

    /// Sets or clears a relation of the caller about `other`. Admins cannot be blocked.
    /// Returns true when something changed.
    pub async fn set_relation(
        &self,
        caller: &Caller,
        other: &str,
        kind: pb::RelationKind,
        on: bool,
    ) -> Result<bool, Error> {
        check_user_id("other", other)?;
        if other == caller.user {
            return Err(Error::InvalidArgument("a relation needs another user".into()));
        }
        let kind = match kind {
            pb::RelationKind::Favourite => relation::FAVOURITE,
            pb::RelationKind::Blocked => relation::BLOCKED,
            pb::RelationKind::Unspecified => {
                return Err(Error::InvalidArgument("kind must be favourite or blocked".into()));
            }
        };
        if on {
            if kind == relation::BLOCKED && self.is_admin(other).await? {
                return Err(Error::PermissionDenied(format!(
                    "{other} is an admin; admins cannot be blocked"
                )));
            }
            let result = relation::Entity::insert(relation::ActiveModel {
                owner: Set(caller.user.clone()),
                other: Set(other.to_owned()),
                kind: Set(kind.to_owned()),
                created_at: Set(now_ms()),
            })
            .on_conflict(
                OnConflict::columns([relation::Column::Owner, relation::Column::Other, relation::Column::Kind])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
            Ok(result > 0)
        } else {
            let result = self
                .db
                .execute_raw(self.stmt(
                    "DELETE FROM relations WHERE owner = ? AND other = ? AND kind = ?",
                    vec![caller.user.clone().into(), other.into(), kind.into()],
                ))
                .await?;
            Ok(result.rows_affected() > 0)
        }
    }

    /// The users the caller marked with `kind`, newest first.
    pub async fn relations(&self, caller: &Caller, kind: pb::RelationKind) -> Result<Vec<String>, Error> {
        let kind = match kind {
            pb::RelationKind::Favourite => relation::FAVOURITE,
            pb::RelationKind::Blocked => relation::BLOCKED,
            pb::RelationKind::Unspecified => {
                return Err(Error::InvalidArgument("kind must be favourite or blocked".into()));
            }
        };
        let rows = self
            .db
            .query_all_raw(self.stmt(
                "SELECT other FROM relations WHERE owner = ? AND kind = ? ORDER BY created_at DESC LIMIT 1000",
                vec![caller.user.clone().into(), kind.into()],
            ))
            .await?;
        rows.iter().map(|r| Ok(r.try_get_by_index(0)?)).collect()
    }

    // ---- complaints ----

    /// Files a complaint about a user or one of their messages the caller can see.
    pub async fn complain(
        &self,
        caller: &Caller,
        target_user: &str,
        message_id: Option<i64>,
        reason: &str,
    ) -> Result<pb::Complaint, Error> {
        if reason.trim().is_empty() {
            return Err(Error::InvalidArgument("reason is required".into()));
        }
        check_text("reason", reason, MAX_REASON_CHARS)?;
        let target = match message_id {
            Some(id) => {
                let found = self.get(&Caller::user(caller.user.clone()), id).await?;
                if !target_user.is_empty() && target_user != found.sender {
                    return Err(Error::InvalidArgument(format!(
                        "message {id} was sent by {}, not {target_user}",
                        found.sender
                    )));
                }
                found.sender
            }
            None => {
                check_user_id("target_user", target_user)?;
                target_user.to_owned()
            }
        };
        if target == caller.user {
            return Err(Error::InvalidArgument("a complaint is about somebody else".into()));
        }
        let model = complaint::ActiveModel {
            reporter: Set(caller.user.clone()),
            target_user: Set(target),
            message_id: Set(message_id),
            reason: Set(reason.to_owned()),
            state: Set(complaint::OPEN.to_owned()),
            created_at: Set(now_ms()),
            ..Default::default()
        }
        .insert(&self.db)
        .await?;
        Ok(complaint_to_proto(model))
    }

    /// Complaints (admins only), newest first, optionally by state.
    pub async fn complaints(
        &self,
        caller: &Caller,
        state: pb::ComplaintState,
        page: Page,
    ) -> Result<(Vec<pb::Complaint>, PageInfo), Error> {
        require_admin(caller)?;
        let (filter, mut values): (&str, Vec<Value>) = match state {
            pb::ComplaintState::Unspecified => ("", Vec::new()),
            pb::ComplaintState::Open => ("state = ? AND", vec![complaint::OPEN.into()]),
            pb::ComplaintState::Resolved => ("state = ? AND", vec![complaint::RESOLVED.into()]),
        };
        values.push(page.before_or_max().into());
        values.push(limit_plus_one(page).into());
        let rows = complaint::Entity::find()
            .from_raw_sql(self.stmt(
                &format!(
                    "SELECT id, reporter, target_user, message_id, reason, state, created_at, resolved_at, resolved_by, \
                     resolution FROM complaints WHERE {filter} id < ? ORDER BY id DESC LIMIT ?"
                ),
                values,
            ))
            .all(&self.db)
            .await?;
        let (rows, info) = page.finish(rows, |c| c.id);
        Ok((rows.into_iter().map(complaint_to_proto).collect(), info))
    }

    /// Resolves an open complaint (admins only).
    pub async fn resolve_complaint(&self, caller: &Caller, id: i64, resolution: &str) -> Result<pb::Complaint, Error> {
        require_admin(caller)?;
        check_text("resolution", resolution, MAX_REASON_CHARS)?;
        let found = complaint::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no complaint {id}")))?;
        if found.state == complaint::RESOLVED {
            return Err(Error::Conflict(format!("complaint {id} is already resolved")));
        }
        let mut active: complaint::ActiveModel = found.into();
        active.state = Set(complaint::RESOLVED.to_owned());
        active.resolved_at = Set(Some(now_ms()));
        active.resolved_by = Set(Some(caller.user.clone()));
        active.resolution = Set(Some(resolution.to_owned()));
        Ok(complaint_to_proto(active.update(&self.db).await?))
    }

    // ---- admin views ----

    /// Messages for admins, newest first: everything (the monitor), one user's, or
    /// the dialog between two users; optionally only those with attachments.
    pub async fn admin_messages(
        &self,
        caller: &Caller,
        user: &str,
        peer: &str,
        attachments_only: bool,
        page: Page,
    ) -> Result<(Vec<pb::ChatMessage>, PageInfo), Error> {
        require_admin(caller)?;
        let attachments = if attachments_only {
            "AND attachment_id IS NOT NULL"
        } else {
            ""
        };
        let before: Value = page.before_or_max().into();
        let limit: Value = limit_plus_one(page).into();
        let rows = match (user.is_empty(), peer.is_empty()) {
            (true, true) => {
                self.messages_where(
                    &self.db,
                    &format!("WHERE id < ? {attachments} ORDER BY id DESC LIMIT ?"),
                    vec![before, limit],
                )
                .await?
            }
            (false, false) => {
                check_user_id("user", user)?;
                check_user_id("peer", peer)?;
                self.messages_where(
                    &self.db,
                    &format!("WHERE dialog = ? AND id < ? {attachments} ORDER BY id DESC LIMIT ?"),
                    vec![dialog_key(user, peer).into(), before, limit],
                )
                .await?
            }
            _ => {
                let user = if user.is_empty() { peer } else { user };
                check_user_id("user", user)?;
                // Two index range scans merged, rather than one OR that sorts everything.
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM ( \
                       SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ? AND id < ? {attachments} ORDER BY id DESC LIMIT ?) AS sent \
                       UNION ALL \
                       SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM messages WHERE recipient = ? AND id < ? {attachments} ORDER BY id DESC LIMIT ?) AS received \
                     ) AS both_sides ORDER BY id DESC LIMIT ?"
                );
                message::Entity::find()
                    .from_raw_sql(self.stmt(
                        &sql,
                        vec![
                            user.into(),
                            before.clone(),
                            limit.clone(),
                            user.into(),
                            before,
                            limit.clone(),
                            limit,
                        ],
                    ))
                    .all(&self.db)
                    .await?
            }
        };
        let (rows, info) = page.finish(rows, |m| m.id);
        Ok((self.to_proto(rows, true).await?, info))
    }

    /// Erases a user: their messages (both directions), relations, complaints they
    /// filed, attachments (returning the blob keys to delete), cache and admin row.
    pub async fn erase_user(&self, user: &str) -> Result<Erased, Error> {
        check_user_id("user", user)?;
        let txn = self.begin_write().await?;
        let b = txn.get_database_backend();
        let attachments = attachment::Entity::find()
            .from_raw_sql(stmt(
                b,
                "SELECT * FROM attachments WHERE owner = ? OR message_id IN \
                 (SELECT id FROM messages WHERE recipient = ? AND attachment_id IS NOT NULL)",
                vec![user.into(), user.into()],
            ))
            .all(&txn)
            .await?;
        let mut erased = Erased::default();
        for a in &attachments {
            erased.blob_keys.push(a.blob_key.clone());
            erased.blob_keys.push(a.thumbnail_key.clone());
        }
        erased.attachments = attachments.len() as u64;
        let ids: Vec<Value> = attachments.iter().map(|a| a.id.clone().into()).collect();
        for chunk in ids.chunks(500) {
            txn.execute_raw(stmt(
                b,
                &format!("DELETE FROM attachments WHERE id IN ({})", placeholders(chunk.len())),
                chunk.to_vec(),
            ))
            .await?;
        }
        txn.execute_raw(stmt(
            b,
            "DELETE FROM translations WHERE message_id IN (SELECT id FROM messages WHERE sender = ? OR recipient = ?)",
            vec![user.into(), user.into()],
        ))
        .await?;
        erased.messages = txn
            .execute_raw(stmt(
                b,
                "DELETE FROM messages WHERE sender = ? OR recipient = ?",
                vec![user.into(), user.into()],
            ))
            .await?
            .rows_affected();
        for sql in [
            "DELETE FROM relations WHERE owner = ? OR other = ?",
            "DELETE FROM complaints WHERE reporter = ? OR target_user = ?",
            "DELETE FROM users WHERE id = ? OR id = ?",
            "DELETE FROM admins WHERE user_id = ? OR user_id = ?",
        ] {
            txn.execute_raw(stmt(b, sql, vec![user.into(), user.into()])).await?;
        }
        txn.commit().await?;
        Ok(erased)
    }

    // ---- users cache ----

    /// Stores fetched user details (replacing older ones).
    pub async fn put_users(&self, users: &[UserInfo]) -> Result<(), Error> {
        if users.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let models = users.iter().map(|u| user::ActiveModel {
            id: Set(u.id.clone()),
            name: Set(u.name.clone()),
            name_key: Set(u.name.to_lowercase()),
            login: Set(u.login.clone()),
            login_key: Set(u.login.to_lowercase()),
            avatar_url: Set(u.avatar_url.clone()),
            city: Set(u.city.clone()),
            age: Set(u.age),
            status: Set(u.status.clone()),
            fetched_at: Set(now),
        });
        user::Entity::insert_many(models)
            .on_conflict(
                OnConflict::column(user::Column::Id)
                    .update_columns([
                        user::Column::Name,
                        user::Column::NameKey,
                        user::Column::Login,
                        user::Column::LoginKey,
                        user::Column::AvatarUrl,
                        user::Column::City,
                        user::Column::Age,
                        user::Column::Status,
                        user::Column::FetchedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Cached users by id, with when they were fetched.
    pub async fn cached_users(&self, ids: &[String]) -> Result<Vec<(UserInfo, i64)>, Error> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let values: Vec<Value> = chunk.iter().map(|id| id.clone().into()).collect();
            let rows = user::Entity::find()
                .from_raw_sql(self.stmt(
                    &format!("SELECT * FROM users WHERE id IN ({})", placeholders(values.len())),
                    values,
                ))
                .all(&self.db)
                .await?;
            out.extend(rows.into_iter().map(|u| (user_info(&u), u.fetched_at)));
        }
        Ok(out)
    }

    /// Contact search: cached users whose name or login starts with `prefix`
    /// (case-insensitive), at most `limit`.
    pub async fn search_contacts(&self, prefix: &str, limit: u64) -> Result<Vec<UserInfo>, Error> {
        let key = prefix.trim().to_lowercase();
        if key.is_empty() || key.len() > 200 || key.contains('\0') {
            return Err(Error::InvalidArgument("q must be 1-200 bytes".into()));
        }
        // A range on the lower-cased key uses the index on both backends (bytewise
        // collation), unlike LIKE.
        let upper = format!("{key}\u{10FFFF}");
        let rows = user::Entity::find()
            .from_raw_sql(self.stmt(
                "SELECT * FROM users WHERE (name_key >= ? AND name_key < ?) OR (login_key >= ? AND login_key < ?) \
                 ORDER BY name_key LIMIT ?",
                vec![
                    key.clone().into(),
                    upper.clone().into(),
                    key.into(),
                    upper.into(),
                    i64::try_from(limit.clamp(1, MAX_PAGE_SIZE)).unwrap_or(50).into(),
                ],
            ))
            .all(&self.db)
            .await?;
        Ok(rows.iter().map(user_info).collect())
    }

    // ---- translations ----

    /// A cached translation of a message.
    pub async fn cached_translation(&self, message_id: i64, lang: &str) -> Result<Option<String>, Error> {
        Ok(translation::Entity::find_by_id((message_id, lang.to_owned()))
            .one(&self.db)
            .await?
            .map(|t| t.text))
    }

    /// Caches a translation.
    pub async fn put_translation(&self, message_id: i64, lang: &str, text: &str) -> Result<(), Error> {
        translation::Entity::insert(translation::ActiveModel {
            message_id: Set(message_id),
            lang: Set(lang.to_owned()),
            text: Set(text.to_owned()),
            created_at: Set(now_ms()),
        })
        .on_conflict(
            OnConflict::columns([translation::Column::MessageId, translation::Column::Lang])
                .update_column(translation::Column::Text)
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    // ---- attachments ----

    /// Records an uploaded attachment.
    pub async fn put_attachment(&self, model: attachment::Model) -> Result<(), Error> {
        let active: attachment::ActiveModel = model.into();
        attachment::Entity::insert(active)
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// An attachment the caller may see: their own upload, one sent to them, or any
    /// for admins.
    pub async fn attachment(&self, caller: &Caller, id: &str) -> Result<attachment::Model, Error> {
        let not_found = || Error::NotFound(format!("no attachment {id}"));
        if id.len() > MAX_ID_LEN {
            return Err(not_found());
        }
        let found = attachment::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?
            .ok_or_else(not_found)?;
        if caller.admin || found.owner == caller.user {
            return Ok(found);
        }
        if let Some(message_id) = found.message_id
            && let Some(m) = self.message_by_id(&self.db, message_id).await?
            && m.recipient == caller.user
            && m.deleted_at.is_none()
        {
            return Ok(found);
        }
        Err(not_found())
    }

    // ---- conversion ----

    async fn one_to_proto(&self, model: message::Model, admin_view: bool) -> Result<pb::ChatMessage, Error> {
        self.to_proto(vec![model], admin_view)
            .await?
            .pop()
            .ok_or_else(|| internal("message vanished during conversion"))
    }

    /// Converts stored messages to the proto shape, with their attachments. The
    /// sender's user agent is shown to admins only.
    pub async fn to_proto(&self, models: Vec<message::Model>, admin_view: bool) -> Result<Vec<pb::ChatMessage>, Error> {
        let ids: Vec<Value> = models
            .iter()
            .filter(|m| m.deleted_at.is_none())
            .filter_map(|m| m.attachment_id.clone().map(Value::from))
            .collect();
        let mut attachments: HashMap<String, attachment::Model> = HashMap::new();
        if !ids.is_empty() {
            let rows = attachment::Entity::find()
                .from_raw_sql(self.stmt(
                    &format!("SELECT * FROM attachments WHERE id IN ({})", placeholders(ids.len())),
                    ids,
                ))
                .all(&self.db)
                .await?;
            attachments = rows.into_iter().map(|a| (a.id.clone(), a)).collect();
        }
        Ok(models
            .into_iter()
            .map(|m| {
                let attachment = m
                    .attachment_id
                    .as_ref()
                    .filter(|_| m.deleted_at.is_none())
                    .and_then(|id| attachments.get(id))
                    .map(attachment_to_proto);
                pb::ChatMessage {
                    id: m.id.to_string(),
                    client_id: m.client_id,
                    from: m.sender,
                    to: m.recipient,
                    text: m.text,
                    attachment,
                    created_at: Some(timestamp(m.created_at)),
                    edited_at: m.edited_at.map(timestamp),
                    deleted_at: m.deleted_at.map(timestamp),
                    delivered_at: m.delivered_at.map(timestamp),
                    read_at: m.read_at.map(timestamp),
                    user_agent: if admin_view { m.user_agent } else { String::new() },
                }
            })
            .collect())
    }
}

fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => number_placeholders(sql),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

fn limit_plus_one(page: Page) -> i64 {
    i64::try_from(page.size.saturating_add(1)).unwrap_or(i64::MAX)
}

/// Refuses callers without admin rights.
pub fn require_admin(caller: &Caller) -> Result<(), Error> {
    if caller.admin {
        Ok(())
    } else {
        Err(Error::PermissionDenied("this needs admin rights".into()))
    }
}

fn user_info(u: &user::Model) -> UserInfo {
    UserInfo {
        id: u.id.clone(),
        name: u.name.clone(),
        login: u.login.clone(),
        avatar_url: u.avatar_url.clone(),
        city: u.city.clone(),
        age: u.age,
        status: u.status.clone(),
    }
}

/// The HTTP path of an attachment's image.
pub fn attachment_url(id: &str) -> String {
    format!("/api/v1/attachments/{id}")
}

/// The proto shape of an attachment.
pub fn attachment_to_proto(a: &attachment::Model) -> pb::Attachment {
    pb::Attachment {
        id: a.id.clone(),
        content_type: a.content_type.clone(),
        size: u64::try_from(a.size).unwrap_or(0),
        width: u32::try_from(a.width).unwrap_or(0),
        height: u32::try_from(a.height).unwrap_or(0),
        url: attachment_url(&a.id),
        thumbnail_url: format!("{}/thumbnail", attachment_url(&a.id)),
    }
}

fn complaint_to_proto(c: complaint::Model) -> pb::Complaint {
    pb::Complaint {
        id: c.id.to_string(),
        reporter: c.reporter,
        target_user: c.target_user,
        message_id: c.message_id.map(|id| id.to_string()).unwrap_or_default(),
        reason: c.reason,
        state: if c.state == complaint::RESOLVED {
            pb::ComplaintState::Resolved
        } else {
            pb::ComplaintState::Open
        }
        .into(),
        created_at: Some(timestamp(c.created_at)),
        resolved_at: c.resolved_at.map(timestamp),
        resolved_by: c.resolved_by.unwrap_or_default(),
        resolution: c.resolution.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(number_placeholders("a = ? AND b IN (?, ?)"), "a = $1 AND b IN ($2, $3)");
    }

    #[test]
    fn dialog_keys_are_symmetric_and_unambiguous() {
        assert_eq!(dialog_key("a", "b"), dialog_key("b", "a"));
        assert_ne!(dialog_key("a\",\"b", "c"), dialog_key("a", "b\",\"c"));
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let page = Page::from_request(Some(&PageRequest {
            page_size: 10_000,
            cursor: "42".into(),
        }))
        .expect("valid");
        assert_eq!(
            page,
            Page {
                size: MAX_PAGE_SIZE,
                before: Some(42)
            }
        );
        for bad in ["x", "-1", "0", "99999999999999999999"] {
            let result = Page::from_request(Some(&PageRequest {
                page_size: 1,
                cursor: bad.into(),
            }));
            assert!(matches!(result, Err(Error::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn timestamps_convert_from_milliseconds() {
        assert_eq!(
            timestamp(1_500),
            Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
    }
}
