CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users(id),
    total_cents integer NOT NULL CHECK (total_cents >= 0)
);

CREATE FUNCTION order_count(u bigint) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT count(*) FROM orders WHERE user_id = u);
END
$$;
