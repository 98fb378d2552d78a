//! A connection driven by a thread of its own, for work a source splits across cores
//! (the parts of a chunk read at once: `backfill_ranges`).
//!
//! The connector runs on one thread (a current-thread runtime), so a second connection
//! awaited beside the first lets the *server* work on two parts at once, but every row is
//! still rendered on that one thread. A [`Worker`] owns its connection on a thread with its
//! own runtime: a job sent to it runs there, rows rendered and all, and its answer comes
//! back whole. Jobs run one at a time, in the order sent.
//!
//! The connection moves into each job and back out of it: a job that fails hands back no
//! connection (it may be mid-statement or gone), and the worker's thread then ends, so
//! the next job sent learns it at once. Dropping the worker ends the thread and closes the
//! connection.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Failure, SourceError};

/// A job: the connection in, the connection back (`None`: drop it and end the thread).
type Job<C> = Box<dyn FnOnce(C) -> Pin<Box<dyn Future<Output = Option<C>>>> + Send>;

/// A connection on a thread of its own (module docs).
#[derive(Debug)]
pub struct Worker<C> {
    jobs: mpsc::UnboundedSender<Job<C>>,
    name: &'static str,
}

impl<C: 'static> Worker<C> {
    /// Starts a thread called `name` and opens its connection there with `connect`; returns
    /// once it is open, or with the error that kept it from opening.
    pub async fn start<F, Fut>(name: &'static str, connect: F) -> Result<Self, SourceError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<C, SourceError>>,
    {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job<C>>();
        let (connected, ready) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Setup.error(format!("a {name} thread's runtime: {e}")))?;
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut conn = match connect().await {
                        Ok(conn) => {
                            let _ = connected.send(Ok(()));
                            conn
                        }
                        Err(e) => {
                            let _ = connected.send(Err(e));
                            return;
                        }
                    };
                    while let Some(job) = queue.recv().await {
                        match job(conn).await {
                            Some(back) => conn = back,
                            None => return,
                        }
                    }
                });
            })
            .map_err(|e| Failure::Setup.error(format!("a {name} thread: {e}")))?;
        match ready.await {
            Ok(Ok(())) => Ok(Self { jobs, name }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                Err(Failure::Interrupted.error(format!("a {name} thread ended while connecting")))
            }
        }
    }

    /// Runs `job` on the worker's thread with its connection, and returns its answer. The
    /// job hands the connection back with the answer, or `None` to close it (after a
    /// failure that may have left it mid-statement).
    pub async fn run<T, F, Fut>(&self, job: F) -> Result<T, SourceError>
    where
        F: FnOnce(C) -> Fut + Send + 'static,
        Fut: Future<Output = (Option<C>, T)> + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let boxed: Job<C> = Box::new(move |conn| {
            Box::pin(async move {
                let (conn, answer) = job(conn).await;
                let _ = reply.send(answer);
                conn
            })
        });
        let gone = || Failure::Interrupted.error(format!("a {} thread ended", self.name));
        self.jobs.send(boxed).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_workers_thread_in_order_and_a_failed_one_ends_it() {
        let worker = Worker::start("test-worker", || async { Ok(Vec::<u32>::new()) })
            .await
            .unwrap();
        let here = std::thread::current().id();
        for i in 0..3 {
            let (seen, thread) = worker
                .run(move |mut conn: Vec<u32>| async move {
                    conn.push(i);
                    let seen = conn.clone();
                    (Some(conn), (seen, std::thread::current().id()))
                })
                .await
                .unwrap();
            assert_eq!(seen, (0..=i).collect::<Vec<_>>());
            assert_ne!(thread, here);
        }
        worker
            .run(|_conn: Vec<u32>| async { (None, ()) })
            .await
            .unwrap();
        let after = worker.run(|c: Vec<u32>| async { (Some(c), ()) }).await;
        assert!(
            after.is_err(),
            "a worker whose job dropped its connection ended"
        );
    }

    #[tokio::test]
    async fn a_connection_that_does_not_open_is_the_error_of_start() {
        let started = Worker::<()>::start("test-worker", || async {
            Err(Failure::Setup.error("no route"))
        })
        .await;
        assert!(started.unwrap_err().to_string().contains("no route"));
    }
}
