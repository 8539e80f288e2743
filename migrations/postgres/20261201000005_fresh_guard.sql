-- The guard of a writer's one-statement group: a node that appends for jobs whose rows it
-- cached (its own running jobs, above all) checks in the same statement that each row is still
-- the one it last wrote, and this function ends the whole statement when one is not. The
-- statement is then undone with its implicit transaction (ids included), and the node decides
-- the group again with the rows locked. 40001 is PostgreSQL's serialization_failure.
CREATE FUNCTION aura_fresh(fresh int8, wanted int8) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF fresh <> wanted THEN
        RAISE EXCEPTION 'a job row changed since this node cached it' USING ERRCODE = '40001';
    END IF;
    RETURN true;
END
$$;
