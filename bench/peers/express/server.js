// The seed tutorial's app: express + pg, one pool of 10 connections, no auth.
// Connection settings come from the PG* environment variables (PGHOST, PGPORT, PGUSER,
// PGDATABASE, PGPASSWORD), which pg reads itself; PORT is where it listens (127.0.0.1).
const express = require('express');
const { Pool } = require('pg');

const pool = new Pool({ max: 10 });
const app = express();

app.get('/users/:id', async (req, res) => {
  const { rows } = await pool.query('SELECT id, email, name FROM users WHERE id = $1', [req.params.id]);
  if (rows.length === 0) {
    return res.status(404).json({ error: { code: 'user_not_found' } });
  }
  res.json(rows[0]);
});

const server = app.listen(Number(process.env.PORT || 3000), '127.0.0.1', () => {
  console.log(`listening on ${server.address().port}`);
});

process.on('SIGTERM', () => {
  server.close(() => pool.end().then(() => process.exit(0)));
});
