//! A user repository over Postgres and a read-through cache over Redis: the
//! kind of code whose tests need real services, and whose tests collide when
//! two test processes share one database.

use redis::AsyncCommands;
use tokio_postgres::{Client, NoTls};

/// Connects to Postgres; the connection task runs in the background.
pub async fn connect_db(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Users, stored in Postgres.
pub struct UserRepo {
    db: Client,
}

impl UserRepo {
    /// A repository over an open connection.
    pub fn new(db: Client) -> Self {
        UserRepo { db }
    }

    /// Drops and recreates the schema: tests start from a known state.
    pub async fn reset(&self) -> Result<(), tokio_postgres::Error> {
        self.db
            .batch_execute(
                "DROP TABLE IF EXISTS users;
                 CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE)",
            )
            .await
    }

    /// Adds a user and returns its id.
    pub async fn create(&self, email: &str) -> Result<i64, tokio_postgres::Error> {
        let row = self
            .db
            .query_one("INSERT INTO users (email) VALUES ($1) RETURNING id", &[&email])
            .await?;
        Ok(row.get(0))
    }

    /// The id of the user with this email, if any.
    pub async fn find(&self, email: &str) -> Result<Option<i64>, tokio_postgres::Error> {
        let row = self
            .db
            .query_opt("SELECT id FROM users WHERE email = $1", &[&email])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Number of users.
    pub async fn count(&self) -> Result<i64, tokio_postgres::Error> {
        Ok(self.db.query_one("SELECT count(*) FROM users", &[]).await?.get(0))
    }
}

/// A cache of user ids by email, in Redis.
pub struct UserCache {
    conn: redis::aio::MultiplexedConnection,
}

impl UserCache {
    /// Connects to Redis.
    pub async fn connect(url: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        Ok(UserCache {
            conn: client.get_multiplexed_async_connection().await?,
        })
    }

    /// Empties the cache: tests start from a known state.
    pub async fn clear(&mut self) -> redis::RedisResult<()> {
        redis::cmd("FLUSHDB").query_async(&mut self.conn).await
    }

    /// Looks up a user id, reading through to the repository on a miss.
    pub async fn user_id(&mut self, repo: &UserRepo, email: &str) -> redis::RedisResult<Option<i64>> {
        let key = format!("user:{email}");
        if let Some(id) = self.conn.get::<_, Option<i64>>(&key).await? {
            return Ok(Some(id));
        }
        let id = repo.find(email).await.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Io, "database", e.to_string()))
        })?;
        if let Some(id) = id {
            let _: () = self.conn.set_ex(&key, id, 60).await?;
        }
        Ok(id)
    }

    /// Number of cached entries.
    pub async fn len(&mut self) -> redis::RedisResult<i64> {
        redis::cmd("DBSIZE").query_async(&mut self.conn).await
    }
}
