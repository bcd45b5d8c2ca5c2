//! One way to run a statement on either backend, so the runtime's stores are written once.
//!
//! Both backends take the same statements (`$n` placeholders work on SQLite as on PostgreSQL).
//! A [`Statement`] carries its text and its parameters (text or integer, each possibly NULL);
//! [`Db`] (a pool) and [`Tx`] (a transaction) run it on whichever backend they hold and hand
//! back a [`Row`] that decodes the same way on both. Only the few lines that bind and run differ
//! per backend.

use alloy_primitives::{Address, B256};
use bursar_protocol::{Amount, Network};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Postgres, SqlSafeStr, SqlStr, Sqlite};

use crate::common::StoreError;

/// One parameter of a statement.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Text(Option<String>),
    Integer(Option<i64>),
    Boolean(bool),
}

impl From<bool> for Param {
    fn from(value: bool) -> Self {
        Param::Boolean(value)
    }
}

impl From<String> for Param {
    fn from(value: String) -> Self {
        Param::Text(Some(value))
    }
}

impl From<&String> for Param {
    fn from(value: &String) -> Self {
        Param::Text(Some(value.clone()))
    }
}

impl From<&str> for Param {
    fn from(value: &str) -> Self {
        Param::Text(Some(value.to_string()))
    }
}

impl From<Option<String>> for Param {
    fn from(value: Option<String>) -> Self {
        Param::Text(value)
    }
}

impl From<Option<&str>> for Param {
    fn from(value: Option<&str>) -> Self {
        Param::Text(value.map(str::to_string))
    }
}

impl From<i64> for Param {
    fn from(value: i64) -> Self {
        Param::Integer(Some(value))
    }
}

impl From<Option<i64>> for Param {
    fn from(value: Option<i64>) -> Self {
        Param::Integer(value)
    }
}

// Typed values are written in one text form each, the same the columns have always held:
// addresses and 32-byte values as lowercase `0x` hex, networks as CAIP-2. Reading them back
// ([`Row::typed`]) parses that text once; text that does not parse is a corrupt row.

impl From<Address> for Param {
    fn from(value: Address) -> Self {
        Param::Text(Some(format!("{value:#x}")))
    }
}

impl From<&Address> for Param {
    fn from(value: &Address) -> Self {
        Param::from(*value)
    }
}

impl From<Option<Address>> for Param {
    fn from(value: Option<Address>) -> Self {
        Param::Text(value.map(|value| format!("{value:#x}")))
    }
}

impl From<B256> for Param {
    fn from(value: B256) -> Self {
        Param::Text(Some(format!("{value:#x}")))
    }
}

impl From<&B256> for Param {
    fn from(value: &B256) -> Self {
        Param::from(*value)
    }
}

impl From<Option<B256>> for Param {
    fn from(value: Option<B256>) -> Self {
        Param::Text(value.map(|value| format!("{value:#x}")))
    }
}

impl From<&Network> for Param {
    fn from(value: &Network) -> Self {
        Param::Text(Some(value.to_string()))
    }
}

impl From<Option<&Network>> for Param {
    fn from(value: Option<&Network>) -> Self {
        Param::Text(value.map(Network::to_string))
    }
}

impl From<Amount> for Param {
    fn from(value: Amount) -> Self {
        Param::Text(Some(value.to_string()))
    }
}

impl From<Option<Amount>> for Param {
    fn from(value: Option<Amount>) -> Self {
        Param::Text(value.map(|value| value.to_string()))
    }
}

/// A value stored as text in one canonical form (see the `From<..> for Param` impls above).
pub(crate) trait StoredText: Sized {
    fn from_stored(text: &str) -> Option<Self>;
}

impl StoredText for Address {
    fn from_stored(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl StoredText for B256 {
    fn from_stored(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl StoredText for Network {
    fn from_stored(text: &str) -> Option<Self> {
        Network::parse(text).ok()
    }
}

impl StoredText for Amount {
    fn from_stored(text: &str) -> Option<Self> {
        Amount::parse_atomic(text).ok()
    }
}

/// A statement and its parameters, in placeholder order.
#[derive(Debug)]
pub(crate) struct Statement {
    sql: SqlStr,
    params: Vec<Param>,
}

/// A statement from its text: a literal, or text built from literals (wrapped in
/// `sqlx::AssertSqlSafe`), never from input; input goes in as parameters.
pub(crate) fn statement(sql: impl SqlSafeStr) -> Statement {
    Statement {
        sql: sql.into_sql_str(),
        params: Vec::new(),
    }
}

impl Statement {
    /// Adds the next parameter (`$1`, `$2`, ... in order).
    pub(crate) fn bind(mut self, value: impl Into<Param>) -> Self {
        self.params.push(value.into());
        self
    }

    fn sqlite(self) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
        let mut query = sqlx::query(self.sql);
        for param in self.params {
            query = match param {
                Param::Text(value) => query.bind(value),
                Param::Integer(value) => query.bind(value),
                Param::Boolean(value) => query.bind(value),
            };
        }
        query
    }

    fn postgres(self) -> sqlx::query::Query<'static, Postgres, PgArguments> {
        let mut query = sqlx::query(self.sql);
        for param in self.params {
            query = match param {
                Param::Text(value) => query.bind(value),
                Param::Integer(value) => query.bind(value),
                Param::Boolean(value) => query.bind(value),
            };
        }
        query
    }
}

/// A row from either backend.
pub(crate) enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl Row {
    /// The value of `column`, decoded as `T`.
    pub(crate) fn get<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, Sqlite>
            + sqlx::Type<Sqlite>
            + for<'r> sqlx::Decode<'r, Postgres>
            + sqlx::Type<Postgres>,
    {
        use sqlx::Row as _;
        match self {
            Row::Sqlite(row) => row.try_get(column),
            Row::Postgres(row) => row.try_get(column),
        }
    }
}

impl Row {
    /// The value of the text column `column`, parsed as `T`; text that does not parse is
    /// [`StoreError::Corrupt`] (a stored value is never dropped or guessed at).
    pub(crate) fn typed<T: StoredText>(&self, column: &str) -> Result<T, StoreError> {
        let text: String = self.get(column)?;
        T::from_stored(&text).ok_or_else(|| corrupt(column, &text))
    }

    /// [`Row::typed`] of a nullable column.
    pub(crate) fn typed_opt<T: StoredText>(&self, column: &str) -> Result<Option<T>, StoreError> {
        let text: Option<String> = self.get(column)?;
        text.map(|text| T::from_stored(&text).ok_or_else(|| corrupt(column, &text)))
            .transpose()
    }
}

fn corrupt(column: &str, text: &str) -> StoreError {
    const SHOWN_CHARS_MAX: usize = 80;
    let shown: String = text.chars().take(SHOWN_CHARS_MAX).collect();
    StoreError::Corrupt(format!(
        "column {column} holds {shown:?}, which does not read back"
    ))
}

/// A pool of either backend, migrated.
#[derive(Clone, Copy)]
pub(crate) enum Db<'a> {
    Sqlite(&'a SqlitePool),
    Postgres(&'a PgPool),
}

impl Db<'_> {
    /// Runs `statement`; returns how many rows it changed.
    pub(crate) async fn execute(self, statement: Statement) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => statement.sqlite().execute(pool).await?.rows_affected(),
            Db::Postgres(pool) => statement.postgres().execute(pool).await?.rows_affected(),
        })
    }

    pub(crate) async fn fetch_optional(
        self,
        statement: Statement,
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => statement
                .sqlite()
                .fetch_optional(pool)
                .await?
                .map(Row::Sqlite),
            Db::Postgres(pool) => statement
                .postgres()
                .fetch_optional(pool)
                .await?
                .map(Row::Postgres),
        })
    }

    pub(crate) async fn fetch_one(self, statement: Statement) -> Result<Row, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => Row::Sqlite(statement.sqlite().fetch_one(pool).await?),
            Db::Postgres(pool) => Row::Postgres(statement.postgres().fetch_one(pool).await?),
        })
    }

    pub(crate) async fn fetch_all(self, statement: Statement) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => rows(statement.sqlite().fetch_all(pool).await?, Row::Sqlite),
            Db::Postgres(pool) => rows(statement.postgres().fetch_all(pool).await?, Row::Postgres),
        })
    }

    /// The row `statement` finds, if any, decoded.
    pub(crate) async fn fetch_optional_as<T, E: From<sqlx::Error>>(
        self,
        statement: Statement,
        decode: fn(&Row) -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        self.fetch_optional(statement)
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    /// Every row `statement` finds, decoded.
    pub(crate) async fn fetch_all_as<T, E: From<sqlx::Error>>(
        self,
        statement: Statement,
        decode: fn(&Row) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        self.fetch_all(statement)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    /// Starts a transaction.
    pub(crate) async fn begin(self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }
}

/// A transaction on either backend. Dropped without [`Tx::commit`], it rolls back.
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    /// Whether the transaction runs on PostgreSQL (where a statement is a network round trip,
    /// so a few are worth joining into one).
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Tx::Postgres(_))
    }

    pub(crate) async fn execute(&mut self, statement: Statement) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(tx) => statement.sqlite().execute(&mut **tx).await?.rows_affected(),
            Tx::Postgres(tx) => statement
                .postgres()
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    pub(crate) async fn fetch_optional(
        &mut self,
        statement: Statement,
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(tx) => statement
                .sqlite()
                .fetch_optional(&mut **tx)
                .await?
                .map(Row::Sqlite),
            Tx::Postgres(tx) => statement
                .postgres()
                .fetch_optional(&mut **tx)
                .await?
                .map(Row::Postgres),
        })
    }

    pub(crate) async fn fetch_one(&mut self, statement: Statement) -> Result<Row, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(tx) => Row::Sqlite(statement.sqlite().fetch_one(&mut **tx).await?),
            Tx::Postgres(tx) => Row::Postgres(statement.postgres().fetch_one(&mut **tx).await?),
        })
    }

    pub(crate) async fn fetch_all(
        &mut self,
        statement: Statement,
    ) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(tx) => rows(statement.sqlite().fetch_all(&mut **tx).await?, Row::Sqlite),
            Tx::Postgres(tx) => rows(
                statement.postgres().fetch_all(&mut **tx).await?,
                Row::Postgres,
            ),
        })
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(tx) => tx.rollback().await,
            Tx::Postgres(tx) => tx.rollback().await,
        }
    }
}

fn rows<R>(rows: Vec<R>, wrap: fn(R) -> Row) -> Vec<Row> {
    rows.into_iter().map(wrap).collect()
}
